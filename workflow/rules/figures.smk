# Figures (DESIGN.md §Figures), one script each, PDF for papers and PNG for the report.
# Every figure script imports plotting.py (agent colours and order shared by all figures): it
# is an input, so editing it re-renders every figure, while editing one script re-renders
# only that figure (snakemake tracks a `script:` file itself, not what it imports).


rule figure_training_curves:
    input:
        summary=table("training_curves"),
        helpers=script_input("plotting.py"),
    output:
        **figure_outputs("fig1_training_curves", "1 meta-training curves"),
    params:
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/figures/fig1_training_curves.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_training_curves.py"


rule figure_adaptation:
    input:
        summary=table("adaptation"),
        helpers=script_input("plotting.py"),
    output:
        **figure_outputs("fig2_adaptation", "2 fast adaptation"),
    params:
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/figures/fig2_adaptation.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_adaptation.py"


rule figure_ood:
    input:
        ood=table("ood"),
        ood_by_task=table("ood_by_task"),
        helpers=script_input("plotting.py"),
    output:
        **figure_outputs("fig3_ood", "3 out-of-distribution"),
    params:
        missing=missing(OOD_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/figures/fig3_ood.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_ood.py"


rule figure_ablations:
    input:
        summary=table("ablations"),
        helpers=script_input("plotting.py"),
    output:
        **figure_outputs("fig4_ablations", "4 ablations"),
    params:
        missing=missing(ABLATION_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/figures/fig4_ablations.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_ablations.py"


rule figure_latent_map:
    input:
        latents=evaluations(MAIN_RUNS, "latents.npz"),
        helpers=script_input("plotting.py"),
    output:
        **figure_outputs("fig5_latent_map", "5 latent map"),
    params:
        runs=[run.record() for run in used(MAIN_RUNS)],
        analysis=analysis_params(),
    log:
        f"{LOGS}/figures/fig5_latent_map.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_latent_map.py"


rule figure_aggregate:
    input:
        aggregate=table("aggregate_scores"),
        improvement=table("probability_of_improvement"),
        curves=table("training_curves_by_seed"),  # which envs were normalised, and why not
        helpers=script_input("plotting.py"),
        normalisation=script_input("aggregate_scores.py"),
        statistics=script_input("analysis.py"),
    output:
        **figure_outputs("fig6_aggregate", "6 aggregate over envs"),
    params:
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
        figures=config["figures"],
    log:
        f"{LOGS}/figures/fig6_aggregate.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/figure_aggregate.py"


# The config this experiment was built with: the report shows it, and the provenance report
# (a second `snakemake --report` run) replays the workflow on it.
rule config_snapshot:
    output:
        f"{RESULTS}/config.yaml",
    params:
        # key order kept: ablation directory names follow the order of each variant's keys
        config=json.dumps(config),
    log:
        f"{LOGS}/config_snapshot.log",
    run:
        Path(output[0]).write_text(yaml.safe_dump(json.loads(params.config), sort_keys=False))


# report.html: our page (figures with captions, key tables, the config as a table), built by
# report.py; provenance.html: Snakemake's own report (rule graph, runtimes, code), linked from
# it. Rebuilt when a figure, a table, a caption or a helper of report.py changes.
rule report:
    input:
        config=f"{RESULTS}/config.yaml",
        figures=FIGURE_FILES,
        tables=TABLE_FILES,
        captions=REPORT_CAPTIONS,
        helpers=[script_input(name) for name in ("plotting.py", "analysis.py",
                                                 "aggregate_scores.py")],
    output:
        report=f"{RESULTS}/report.html",
        provenance=f"{RESULTS}/provenance.html",
    params:
        runs=[run.record() for run in used(MAIN_RUNS)],  # budgets, device, commit
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
        snakefile=workflow.main_snakefile,
        workdir=lambda wildcards: os.getcwd(),
    log:
        f"{LOGS}/report.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/report.py"
