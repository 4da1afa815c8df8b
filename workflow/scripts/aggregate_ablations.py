"""Table: TrMRL's ablations. For each study (a grid over hyperparameters, e.g. layers) and
each of its variants, the meta-training curve: mean, 95% bootstrap CI and IQM over seeds."""

import logging

import pandas as pd
from analysis import check_complete, per_seed_curves, setup_logging, summarise

log = logging.getLogger("trmrl.workflow")


def label(values: dict) -> str:
    """{"tfixup": True, "layernorm": False} -> "tfixup=true, layernorm=false"."""
    def text(value):
        return str(value).lower() if isinstance(value, bool) else str(value)
    return ", ".join(f"{key}={text(value)}" for key, value in values.items())


def main(snakemake):
    setup_logging(snakemake)
    analysis = snakemake.params.analysis
    frames, problems = [], []
    for order, point in enumerate(snakemake.params.points):
        curves, point_problems = per_seed_curves(point["runs"], analysis["envs"])
        problems += point_problems
        frames += [curve.assign(study=point["study"], variant=point["variant"], order=order,
                                label=label(point["values"]), default=point["default"])
                   for curve in curves]
    check_complete(snakemake.params.missing + sorted(set(problems)), analysis["allow_partial"],
                   "ablations")
    columns = ["study", "variant", "label", "default", "order", "agent", "env", "seed",
               "env_steps", "metric", "value"]
    by_seed = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(
        columns=columns)
    by_seed.to_csv(snakemake.output.by_seed, index=False)
    summary = summarise(by_seed, ["study", "variant", "label", "default", "order", "agent", "env",
                                  "env_steps", "metric"], analysis["statistics"])
    summary.to_csv(snakemake.output.summary, index=False)
    log.info("%d ablation points -> %d curve points", len(snakemake.params.points), len(summary))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
