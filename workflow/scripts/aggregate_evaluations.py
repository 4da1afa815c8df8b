"""Tables of an evaluation protocol (fast adaptation, or out-of-distribution): every task's
return per episode of the trial (``*_by_task``), and per agent x env x episode the mean, 95%
bootstrap CI and IQM over seeds of the per-seed mean over tasks."""

import logging

from analysis import check_complete, metric_of, read_eval_tables, setup_logging, summarise

log = logging.getLogger("trmrl.workflow")


def main(snakemake):
    setup_logging(snakemake)
    analysis, protocol = snakemake.params.analysis, snakemake.params.protocol
    by_task, problems = read_eval_tables(snakemake.params.runs, protocol)
    check_complete(snakemake.params.missing + problems, analysis["allow_partial"],
                   f"{protocol} evaluation")
    metrics = {env: metric_of(info) for env, info in analysis["envs"].items()}
    by_task = by_task.assign(metric=by_task["env"].map(metrics))
    is_rate = by_task["metric"] == "success_rate"
    by_task["value"] = by_task["return"].where(~is_rate, by_task["success"].astype(float))
    by_task.to_csv(snakemake.output.by_task, index=False)
    per_seed = (by_task.groupby(["agent", "env", "seed", "episode", "metric"], sort=False)
                ["value"].mean().reset_index())
    summary = summarise(per_seed, ["agent", "env", "episode", "metric"], analysis["statistics"])
    summary.to_csv(snakemake.output.summary, index=False)
    log.info("%s: %d rows -> %d summary rows", protocol, len(by_task), len(summary))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
