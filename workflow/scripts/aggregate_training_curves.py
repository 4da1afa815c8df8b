"""Table: meta-training curves. Per run, the test-task score (return; Meta-World: success
rate) at each evaluation point; per agent x env x env_steps, its mean, 95% bootstrap CI and
IQM over seeds."""

import logging

import pandas as pd
from analysis import check_complete, per_seed_curves, setup_logging, summarise

log = logging.getLogger("trmrl.workflow")


def main(snakemake):
    setup_logging(snakemake)
    analysis = snakemake.params.analysis
    frames, problems = per_seed_curves(snakemake.params.runs, analysis["envs"])
    check_complete(snakemake.params.missing + problems, analysis["allow_partial"],
                   "meta-training curves")
    columns = ["agent", "env", "seed", "env_steps", "metric", "value"]
    by_seed = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)
    by_seed.to_csv(snakemake.output.by_seed, index=False)
    summary = summarise(by_seed, ["agent", "env", "env_steps", "metric"], analysis["statistics"])
    summary.to_csv(snakemake.output.summary, index=False)
    log.info("%d runs -> %d curve points", len(frames), len(summary))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
