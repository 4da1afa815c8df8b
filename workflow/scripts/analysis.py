"""Reading run directories and the statistics of the tables, shared by the aggregate scripts.

Confidence intervals are percentile bootstraps from ``scipy.stats.bootstrap`` (rliable's
default method). rliable itself is not used: its pinned ``arch<8`` does not import with
pandas 3, and ``arch`` 8 breaks rliable. ``scipy.stats.bootstrap`` resamples each of several
samples independently, which is exactly rliable's stratified bootstrap (one sample per env).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

log = logging.getLogger("trmrl.workflow")

IQM_TRIM = 0.25  # the interquartile mean drops the lowest and the highest 25%
SUMMARY_COLUMNS = ["n", "mean", "ci_low", "ci_high", "iqm"]


class IncompleteRuns(RuntimeError):
    """Runs the config asks for are missing or unfinished (and allow_partial is false)."""


def setup_logging(snakemake) -> None:
    """Log to the rule's log file (and stderr), so a failing script explains itself."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if snakemake.log:
        handlers.append(logging.FileHandler(snakemake.log[0], mode="w"))
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s",
                        handlers=handlers, force=True)


# ---------------------------------------------------------------------------------------
# What is measured
# ---------------------------------------------------------------------------------------
def metric_of(env_info: dict) -> str:
    """Meta-World is scored by success rate, MuJoCo locomotion by return."""
    return "success_rate" if env_info["success_metric"] else "return"


def score_column(frame: pd.DataFrame, metric: str) -> pd.Series:
    return frame["success"].astype(float) if metric == "success_rate" else frame["return"]


# ---------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------
def check_complete(problems: list[str], allow_partial: bool, what: str) -> None:
    """Fail naming every incomplete run, or (allow_partial) log them and go on."""
    if not problems:
        return
    listing = "\n  ".join(problems)
    if not allow_partial:
        raise IncompleteRuns(
            f"{what}: {len(problems)} run(s) missing or incomplete; no table averages over a "
            f"partial set of seeds unless the config says `allow_partial: true`:\n  {listing}")
    log.warning("%s: allow_partial, leaving out %d run(s):\n  %s", what, len(problems), listing)


def run_config(run: dict) -> dict:
    return yaml.safe_load((Path(run["path"]) / "config.yaml").read_text())


def read_test_progress(run: dict) -> tuple[pd.DataFrame | None, str | None]:
    """The test-task rows of a run's progress.csv, or (None, why) if the run is unfinished."""
    path = Path(run["path"])
    try:
        hyperparameters = run_config(run)["hyperparameters"]
        progress = pd.read_csv(path / "progress.csv")
    except (OSError, KeyError, yaml.YAMLError, pd.errors.ParserError) as error:
        return None, f"{run['name']}: unreadable run directory ({error})"
    test = progress[progress["split"] == "test"]
    if test.empty or test["env_steps"].max() < hyperparameters["steps"]:
        reached = 0 if test.empty else int(test["env_steps"].max())
        return None, (f"{run['name']}: trained to {reached:,} of {hyperparameters['steps']:,} "
                      "env steps")
    return test, None


def nominal_grid(steps: int, eval_every: int) -> np.ndarray:
    """The evaluation points of a run as configured: 0, eval_every, ... and the budget."""
    return np.unique(np.append(np.arange(0, steps, eval_every), steps))


def curve_on_grid(test: pd.DataFrame, metric: str, steps: int, eval_every: int) -> pd.DataFrame:
    """One score per nominal evaluation point: the mean over a test trial's episodes.

    Evaluations happen after the first iteration that crosses each point, so seeds (and
    early-terminating envs) are evaluated at slightly different env steps: values are
    interpolated onto the nominal grid, except that the budget point takes the final
    evaluation itself (the one that normalised scores use).
    """
    per_eval = (test.assign(value=score_column(test, metric))
                .groupby("env_steps")["value"].mean().sort_index())
    grid = nominal_grid(steps, eval_every)
    values = np.interp(grid, per_eval.index.to_numpy(float), per_eval.to_numpy(float))
    values[-1] = per_eval.iloc[-1]
    return pd.DataFrame({"env_steps": grid, "value": values})


def per_seed_curves(runs: list[dict], envs: dict) -> tuple[list[pd.DataFrame], list[str]]:
    """Each finished run's curve on its evaluation grid; and the unfinished runs."""
    frames, problems = [], []
    for run in runs:
        test, problem = read_test_progress(run)
        if problem:
            problems.append(problem)
            continue
        hyperparameters = run_config(run)["hyperparameters"]
        metric = metric_of(envs[run["env"]])
        curve = curve_on_grid(test, metric, hyperparameters["steps"], hyperparameters["eval_every"])
        frames.append(curve.assign(agent=run["agent"], env=run["env"], seed=run["seed"],
                                   metric=metric))
    return frames, problems


def read_eval_tables(runs: list[dict], protocol: str) -> tuple[pd.DataFrame, list[str]]:
    """All eval/<protocol>.csv rows with agent, env, seed columns; and the unreadable runs."""
    frames, problems = [], []
    for run in runs:
        path = Path(run["path"]) / "eval" / f"{protocol}.csv"
        try:
            frame = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
            problems.append(f"{run['name']}: no {protocol} evaluation ({error})")
            continue
        frames.append(frame.assign(agent=run["agent"], env=run["env"], seed=run["seed"]))
    columns = ["agent", "env", "seed", "task", "task_param", "episode", "return", "success"]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    return table[columns], problems


# ---------------------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------------------
def iqm(values, axis=-1):
    return stats.trim_mean(values, IQM_TRIM, axis=axis)


def bootstrap_ci(samples: tuple[np.ndarray, ...], statistic, options: dict,
                 rng: np.random.Generator) -> tuple[float, float]:
    """Percentile bootstrap CI of ``statistic(*samples, axis)``; each sample is resampled on
    its own (a stratified bootstrap when there are several). NaN with < 2 observations."""
    samples = tuple(np.asarray(s, dtype=float) for s in samples)
    if any(len(s) < 2 for s in samples):
        return np.nan, np.nan
    if all(np.ptp(s) == 0 for s in samples):  # every resample is the same
        value = float(statistic(*samples, axis=-1))
        return value, value
    result = stats.bootstrap(samples, statistic, vectorized=True, paired=False,
                             n_resamples=options["bootstrap_resamples"],
                             confidence_level=options["confidence_level"],
                             method="percentile", rng=rng)
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def summarise(frame: pd.DataFrame, by: list[str], options: dict) -> pd.DataFrame:
    """Per group of ``by``: n, mean, CI of the mean and IQM of ``value`` over seeds."""
    rng = np.random.default_rng(options["seed"])
    rows = []
    for key, group in frame.groupby(by, sort=False, dropna=False):
        values = group["value"].dropna().to_numpy(float)
        low, high = bootstrap_ci((values,), np.mean, options, rng)
        rows.append((*key, len(values), values.mean() if len(values) else np.nan, low, high,
                     iqm(values) if len(values) else np.nan))
    return pd.DataFrame(rows, columns=[*by, *SUMMARY_COLUMNS])


def stratified(scores_by_env: list[np.ndarray], aggregate, options: dict, rng) -> tuple[float, ...]:
    """``aggregate`` (e.g. iqm, np.mean) over all env x seed scores, with a CI from the
    stratified bootstrap: seeds are resampled within each env (rliable's method)."""
    def statistic(*samples, axis=-1):
        return aggregate(np.concatenate(samples, axis=axis), axis=axis)

    point = float(statistic(*scores_by_env))
    return (point, *bootstrap_ci(tuple(scores_by_env), statistic, options, rng))


def probability_of_improvement(x_by_env: list[np.ndarray], y_by_env: list[np.ndarray],
                               options: dict, rng) -> tuple[float, ...]:
    """P(X > Y): per env the Mann-Whitney probability that a run of X beats a run of Y (ties
    count half), averaged over envs; CI from the stratified bootstrap of both agents' runs."""
    k = len(x_by_env)

    def statistic(*samples, axis=-1):
        per_env = []
        for x, y in zip(samples[:k], samples[k:]):
            x, y = x[..., :, None], y[..., None, :]
            per_env.append((x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1)))
        return np.mean(per_env, axis=0)

    samples = (*x_by_env, *y_by_env)
    return (float(statistic(*samples)), *bootstrap_ci(samples, statistic, options, rng))
