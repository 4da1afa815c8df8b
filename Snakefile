"""trmrl-bench: train every agent x env x seed, evaluate, aggregate, render the paper's figures.

    snakemake --cores 2 --configfile config/quick.yaml   # the README's main job (minutes)
    snakemake -n                                          # the paper grid: what would run

(`all` is the default target; a target goes before --configfile, which takes several files.)

Rules live in workflow/rules/, scripts in workflow/scripts/; see docs/workflow.md.
"""

from snakemake.utils import min_version

min_version("9.0")


# A config file given with --configfile replaces the paper grid. (Snakemake would otherwise
# merge the two, and e.g. the paper's ablation studies would leak into the quick preset.)
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


# validates the config against workflow/schemas/config.schema.yaml (filling its defaults),
# then plans the runs: agent x env x seed, plus ablation variants
include: "workflow/rules/common.smk"
# with profiles/slurm: the profile's settings checked against the cluster before submission
include: "workflow/rules/cluster.smk"


# Before the first job (not in dry runs; snakemake knows the executor only now): a local
# run checks `gpus` against this machine, a SLURM run its profile against the cluster.
onstart:
    executor = workflow.executor_plugin.name if workflow.executor_plugin else "local"
    if executor == "local":
        check_local_gpus()
    elif executor == "slurm":
        check_slurm_submission()


include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/aggregate.smk"
include: "workflow/rules/figures.smk"


report: "workflow/report/workflow.rst"


# On a cluster only train and evaluate jobs are submitted; tables, figures and the report are
# short and run where snakemake runs.
localrules:
    all,
    runs,
    figures,
    tables,
    config_snapshot,
    report,
    aggregate_training_curves,
    aggregate_adaptation,
    aggregate_ood,
    aggregate_ablations,
    aggregate_scores,
    figure_training_curves,
    figure_adaptation,
    figure_ood,
    figure_ablations,
    figure_latent_map,
    figure_aggregate,


rule all:
    default_target: True
    input:
        FIGURE_FILES,
        TABLE_FILES,
        f"{RESULTS}/report.html",


# train and evaluate every run, nothing else (allow_partial does not apply)
rule runs:
    input:
        run_files(ALL_RUNS, "train.done"),
        run_files(MAIN_RUNS, "eval/adaptation.csv"),
        run_files(OOD_RUNS, "eval/ood.csv"),


rule figures:
    input:
        FIGURE_FILES,


rule tables:
    input:
        TABLE_FILES,
