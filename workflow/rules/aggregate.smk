# Tables: tidy CSVs under results/<experiment>/tables/, one script per table. Per-seed tables
# carry agent, env, seed; summaries carry n, mean, ci_low, ci_high (95% percentile bootstrap
# over seeds) and iqm. Each script checks that every configured run is complete and fails
# naming the missing ones, unless allow_partial (then only finished runs are inputs).


rule aggregate_training_curves:
    input:
        markers=markers(MAIN_RUNS),
        helpers=script_input("analysis.py"),
    output:
        by_seed=table("training_curves_by_seed"),
        summary=report(table("training_curves"), caption="../report/tables.rst",
                       category="Tables", labels={"table": "meta-training curves"}),
    params:
        runs=[run.record() for run in used(MAIN_RUNS)],
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/aggregate/training_curves.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate_training_curves.py"


rule aggregate_adaptation:
    input:
        tables=evaluations(MAIN_RUNS, "adaptation.csv"),
        helpers=script_input("analysis.py"),
    output:
        by_task=table("adaptation_by_task"),
        summary=report(table("adaptation"), caption="../report/tables.rst",
                       category="Tables", labels={"table": "fast adaptation"}),
    params:
        protocol="adaptation",
        runs=[run.record() for run in used(MAIN_RUNS)],
        missing=missing(MAIN_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/aggregate/adaptation.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate_evaluations.py"


rule aggregate_ood:
    input:
        tables=evaluations(OOD_RUNS, "ood.csv"),
        helpers=script_input("analysis.py"),
    output:
        by_task=table("ood_by_task"),
        summary=report(table("ood"), caption="../report/tables.rst",
                       category="Tables", labels={"table": "out-of-distribution"}),
    params:
        protocol="ood",
        runs=[run.record() for run in used(OOD_RUNS)],
        missing=missing(OOD_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/aggregate/ood.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate_evaluations.py"


rule aggregate_ablations:
    input:
        markers=markers(ABLATION_RUNS),
        helpers=script_input("analysis.py"),
    output:
        by_seed=table("ablations_by_seed"),
        summary=report(table("ablations"), caption="../report/tables.rst",
                       category="Tables", labels={"table": "ablations"}),
    params:
        points=[
            {**{k: v for k, v in point.items() if k != "runs"},
             "runs": [run.record() for run in used(point["runs"])]}
            for point in ABLATIONS
        ],
        missing=missing(ABLATION_RUNS),
        analysis=analysis_params(),
    log:
        f"{LOGS}/aggregate/ablations.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate_ablations.py"


rule aggregate_scores:
    input:
        curves=table("training_curves_by_seed"),
        helpers=script_input("analysis.py"),
    output:
        normalized=report(table("normalized_scores"), caption="../report/tables.rst",
                          category="Tables", labels={"table": "normalised scores"}),
        aggregate=report(table("aggregate_scores"), caption="../report/tables.rst",
                         category="Tables", labels={"table": "IQM over envs"}),
        improvement=report(table("probability_of_improvement"), caption="../report/tables.rst",
                           category="Tables", labels={"table": "probability of improvement"}),
    params:
        analysis=analysis_params(),
    log:
        f"{LOGS}/aggregate/scores.log",
    conda:
        "../../environment.yml"
    script:
        "../scripts/aggregate_scores.py"
