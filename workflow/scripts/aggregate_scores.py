"""Tables across envs. Normalised score of each run's final evaluation,
(R - R_memoryless) / (R_oracle - R_memoryless) with the references' means over seeds; per
agent the median, IQM, mean and optimality gap over all env x seed scores with stratified
bootstrap CIs (rliable's four aggregate metrics); and the probability of improvement P(X > Y)
for every pair of agents other than the two references (which bound the scale: comparing an
agent with them says nothing about the agents)."""

import logging

import numpy as np
import pandas as pd
from analysis import iqm, probability_of_improvement, setup_logging, stratified

log = logging.getLogger("trmrl.workflow")
REFERENCES = ("oracle", "memoryless")


def final_scores(curves: pd.DataFrame) -> pd.DataFrame:
    """Each run's last evaluation (the budget point of its curve)."""
    last = curves.groupby(["agent", "env", "seed"])["env_steps"].transform("max")
    return curves[curves["env_steps"] == last].reset_index(drop=True)


def normalise(finals: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """(normalised scores, env -> why it was left out) for the envs of ``finals``."""
    references = finals[finals["agent"].isin(REFERENCES)].groupby(["env", "agent"])["value"].mean()
    rows, excluded = [], {}
    for env, group in finals.groupby("env", sort=False):
        if not all((env, ref) in references.index for ref in REFERENCES):
            excluded[env] = "no oracle or memoryless run"
            log.warning("%s: %s, so no normalised scores", env, excluded[env])
            continue
        upper, lower = references[(env, "oracle")], references[(env, "memoryless")]
        gap = upper - lower
        if not np.isfinite(gap) or gap == 0:
            excluded[env] = f"oracle and memoryless score the same ({upper:.3g})"
            log.warning("%s: %s: not normalisable", env, excluded[env])
            continue
        if gap < 0:
            log.warning("%s: memoryless (%.4g) beats oracle (%.4g): references undertrained?",
                        env, lower, upper)
        rows.append(group.assign(oracle=upper, memoryless=lower,
                                 normalized=(group["value"] - lower) / gap))
    columns = ["agent", "env", "seed", "env_steps", "metric", "value", "oracle", "memoryless",
               "normalized"]
    normalized = pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)
    return normalized, excluded


def scores_by_env(normalized: pd.DataFrame, agent: str, envs: list[str]) -> list[np.ndarray]:
    mine = normalized[normalized["agent"] == agent]
    return [mine.loc[mine["env"] == env, "normalized"].to_numpy(float) for env in envs]


def optimality_gap(scores, axis=-1):
    """rliable's optimality gap: how far runs fall short of the oracle (score 1) on average;
    scores above 1 count as 1, so beating the oracle does not make up for other runs."""
    return np.mean(1.0 - np.minimum(scores, 1.0), axis=axis)


# name -> aggregate over runs; the first three columns keep the table's earlier layout
METRICS = {"iqm": iqm, "mean": np.mean, "median": np.median, "optimality_gap": optimality_gap}
AGGREGATE_COLUMNS = ["agent", "n_envs", "n_runs", "iqm", "iqm_ci_low", "iqm_ci_high", "mean",
                     "ci_low", "ci_high", "median", "median_ci_low", "median_ci_high",
                     "optimality_gap", "optimality_gap_ci_low", "optimality_gap_ci_high"]


def aggregate(normalized: pd.DataFrame, agents: list[str], options: dict, rng) -> pd.DataFrame:
    rows = []
    for agent in agents:
        envs = sorted(normalized.loc[normalized["agent"] == agent, "env"].unique())
        if not envs:
            continue
        samples = scores_by_env(normalized, agent, envs)
        estimates = [value for metric in METRICS.values()
                     for value in stratified(samples, metric, options, rng)]
        rows.append((agent, len(envs), sum(map(len, samples)), *estimates))
    return pd.DataFrame(rows, columns=AGGREGATE_COLUMNS)


def improvement(normalized: pd.DataFrame, agents: list[str], options: dict, rng) -> pd.DataFrame:
    rows = []
    agents = [agent for agent in agents if agent not in REFERENCES]
    for x in agents:
        for y in agents:
            if x == y:
                continue
            envs = sorted(set(normalized.loc[normalized["agent"] == x, "env"])
                          & set(normalized.loc[normalized["agent"] == y, "env"]))
            if not envs:
                continue
            estimate = probability_of_improvement(scores_by_env(normalized, x, envs),
                                                  scores_by_env(normalized, y, envs), options, rng)
            rows.append((x, y, len(envs), *estimate))
    return pd.DataFrame(rows, columns=["agent_x", "agent_y", "n_envs", "probability", "ci_low",
                                       "ci_high"])


def main(snakemake):
    setup_logging(snakemake)
    analysis = snakemake.params.analysis
    options = analysis["statistics"]
    rng = np.random.default_rng(options["seed"])
    curves = pd.read_csv(snakemake.input.curves)
    normalized, _ = normalise(final_scores(curves))
    normalized.to_csv(snakemake.output.normalized, index=False)
    agents = [a for a in analysis["agents"] if a in set(normalized["agent"])]
    aggregate(normalized, agents, options, rng).to_csv(snakemake.output.aggregate, index=False)
    improvement(normalized, agents, options, rng).to_csv(snakemake.output.improvement, index=False)
    log.info("normalised %d runs of %d agents", len(normalized), len(agents))


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by snakemake's `script:`)
