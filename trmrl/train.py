"""`trmrl train`: meta-train one agent on one env with one seed, resumably.

RUN_DIR holds config.yaml (fully resolved), progress.csv (appended, one row per episode
index per evaluation), metrics.csv (the agent's losses per iteration: KL, clip fraction,
value loss, ...) and checkpoint.pt (written atomically). A run killed at any moment
resumes from its last checkpoint: rows written after it are dropped from progress.csv,
and on CPU the resumed run reproduces the uninterrupted one row for row (``wall_s`` aside).
SIGTERM (what SLURM sends before it kills a job that is cancelled, preempted or out of time)
stops the run after the current iteration with a checkpoint, so that nothing is lost.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import trmrl
from trmrl import config as cfg
from trmrl.agents import Agent, agent_class, check_agent_name
from trmrl.envs import SuiteError, check_env_name, make_suite
from trmrl.errors import RunError, Terminated, TrainingDiverged, UserError
from trmrl.sampling import TrialSampler
from trmrl.utils import (atomic_write_bytes, available_cpus, format_duration, git_commit,
                         trainer_threads)

log = logging.getLogger("trmrl.train")

PROGRESS_COLUMNS = ["env_steps", "wall_s", "split", "episode", "return", "success"]
# settings that change how a run executes, not what it learns: a resume may change them
OPERATIONAL_KEYS = ("steps", "num_workers", "pipeline_sampling", "checkpoint_every_s", "cuda_graphs",
                    "torch_compile")
CHECKPOINT_FORMAT = 1


@dataclass
class RunSpec:
    """What identifies a run, plus its resolved hyperparameters."""

    agent: str
    env: str
    seed: int
    device: str  # "cpu" | "cuda" | "cuda:N", resolved from "auto"
    hyperparameters: Any  # the agent's config dataclass instance
    defaults_version: int

    def to_yaml(self) -> dict[str, Any]:
        return {"agent": self.agent, "env": self.env, "seed": self.seed, "device": self.device,
                "trmrl_version": trmrl.__version__, "git_commit": git_commit(),
                "defaults_version": self.defaults_version,
                "hyperparameters": cfg.to_dict(self.hyperparameters)}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise cfg.ConfigError(f"--device {device}: CUDA is not available on this machine; "
                              "use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise cfg.ConfigError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
    return device


def resolve(agent: str, env: str, seed: int, steps: int | None = None, device: str = "auto",
            overrides: dict[str, Any] | None = None) -> RunSpec:
    """Dataclass defaults < package YAML for (agent, env) < overrides < --steps."""
    check_agent_name(agent)
    check_env_name(env)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise cfg.ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    overrides = dict(overrides or {})
    preset = overrides.get("preset", "")
    values, version = cfg.env_defaults(agent, env, preset if isinstance(preset, str) else "")
    values.update(overrides)
    if steps is not None:
        values["steps"] = steps
    hyperparameters = cfg.build(agent_class(agent).config_class, values, source="--set")
    return RunSpec(agent, env, seed, resolve_device(device), hyperparameters, version)


# ---------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------
def _check_existing_run(run_dir: Path, spec: RunSpec) -> None:
    """A RUN_DIR may only be resumed by the same agent/env/seed and hyperparameters."""
    path = run_dir / "config.yaml"
    try:
        old = yaml.safe_load(path.read_text())
        old_id = (old["agent"], old["env"], int(old["seed"]))
        old_hp = old["hyperparameters"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise RunError(f"{path} is not a trmrl run config ({error}); use another --out") from None
    if old_id != (spec.agent, spec.env, spec.seed):
        raise RunError(f"{run_dir} holds a run of agent={old_id[0]} env={old_id[1]} "
                       f"seed={old_id[2]}, not agent={spec.agent} env={spec.env} "
                       f"seed={spec.seed}; use another --out")
    new_hp = cfg.to_dict(spec.hyperparameters)
    # a key added to the code after the run began: the run behaved as the key's default
    # (new hyperparameters always default to the behaviour from before they existed)
    old_hp = {**cfg.to_dict(type(spec.hyperparameters)()), **old_hp}
    changed = [k for k in new_hp if k not in OPERATIONAL_KEYS and old_hp.get(k) != new_hp[k]]
    if changed:
        diffs = ", ".join(f"{k}: {old_hp.get(k)!r} -> {new_hp[k]!r}" for k in changed)
        raise RunError(f"{run_dir} was trained with other hyperparameters ({diffs}); "
                       "resume with the same --set values or use another --out")


def _load_checkpoint(path: Path, spec: RunSpec) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("unknown checkpoint format")
    except Exception as error:  # torch raises many types for a truncated/corrupt file
        raise RunError(f"corrupt checkpoint {path} ({type(error).__name__}: {error}); "
                       "delete it to restart the run from scratch") from None
    if (state["agent"], state["env"], state["seed"]) != (spec.agent, spec.env, spec.seed):
        raise RunError(f"checkpoint {path} belongs to another run")
    return state


def _progress_rows(env_steps: int, wall_s: float, split: str, returns: np.ndarray,
                   success: np.ndarray) -> list[list]:
    """One row per episode index: means over the trials (returns, success: [trials, K])."""
    rows = []
    for episode in range(returns.shape[1]):
        rate = success[:, episode]
        rows.append([env_steps, f"{wall_s:.1f}", split, episode, f"{returns[:, episode].mean():.4f}",
                     "" if np.isnan(rate).all() else f"{np.nanmean(rate):.4f}"])
    return rows


def _append_metrics(path: Path, env_steps: int, iteration: int, wall_s: float,
                    metrics: dict[str, float]) -> None:
    """One row per iteration; the header is the first iteration's metric names. A run
    resumed by a newer version keeps its header (metrics it did not have are left out)."""
    row = {"env_steps": env_steps, "iteration": iteration, "wall_s": f"{wall_s:.1f}",
           **{k: f"{v:.6g}" for k, v in metrics.items()}}
    new = not path.exists() or path.stat().st_size == 0
    if new:
        header = list(row)
    else:
        with open(path, newline="") as handle:
            header = next(csv.reader(handle))
    with open(path, "a", newline="") as handle:
        writer = csv.DictWriter(handle, header, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


class _Progress:
    """A progress bar on a terminal, a log line every ``every_s`` seconds otherwise."""

    def __init__(self, total: int, start: int, every_s: float = 30.0):
        self.total, self.every_s = total, every_s
        self.last_log = 0.0
        self.started, self.start_steps = time.perf_counter(), start
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="step", unit_scale=True,
                            dynamic_ncols=True, file=sys.stderr)

    def update(self, env_steps: int, test_return: float | None) -> None:
        rate = (env_steps - self.start_steps) / max(time.perf_counter() - self.started, 1e-9)
        latest = "n/a" if test_return is None else f"{test_return:.1f}"
        if self.bar is not None:
            self.bar.update(env_steps - self.bar.n)
            self.bar.set_postfix_str(f"test return {latest}")
        elif time.perf_counter() - self.last_log >= self.every_s or env_steps >= self.total:
            self.last_log = time.perf_counter()
            eta = (self.total - env_steps) / rate if rate > 0 else float("inf")
            log.info("env steps %d/%d (%.1f%%)  %.0f steps/s  ETA %s  test return %s",
                     env_steps, self.total, 100 * env_steps / self.total, rate,
                     format_duration(eta) if math.isfinite(eta) else "?", latest)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _StopOnSigterm:
    """Once installed, SIGTERM only sets ``requested``: the training loop then checkpoints and
    stops at the end of the iteration (SLURM waits KillWait, 30 s by default, before SIGKILL).
    Signal handlers can only be installed from the main thread; elsewhere SIGTERM keeps its
    default action and a killed run loses at most one checkpoint interval, as after SIGKILL."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def uninstall(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------
def build_agent(spec: RunSpec) -> Agent:
    suite = make_suite(spec.env)
    return agent_class(spec.agent)(spec.hyperparameters, suite, torch.device(spec.device), spec.seed)


def evaluate_on_test(agent: Agent, sampler: TrialSampler, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic trials on the held-out test tasks, same starting states every time."""
    tasks = agent.suite.eval_tasks("test", seed, agent.config.eval_tasks)
    batch = sampler.run(agent, tasks, deterministic=True, call=0)
    return batch.episode_return, batch.episode_success


def train(spec: RunSpec, run_dir: Path | str) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns a summary dict."""
    run_dir = Path(run_dir)
    hp = spec.hyperparameters
    config_path, progress_path = run_dir / "config.yaml", run_dir / "progress.csv"
    metrics_path = run_dir / "metrics.csv"
    checkpoint_path = run_dir / "checkpoint.pt"
    if config_path.exists():
        _check_existing_run(run_dir, spec)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} exists and is not a trmrl run directory; use another --out")
    checkpoint = _load_checkpoint(checkpoint_path, spec) if checkpoint_path.exists() else None

    torch.set_num_threads(available_cpus())
    agent = build_agent(spec)
    suite = agent.suite
    sampler = TrialSampler(suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial,
                           num_workers=hp.num_workers if agent.collects_trainer_trials else 0,
                           seed=spec.seed, pipeline=hp.pipeline_sampling)
    torch.set_num_threads(trainer_threads(spec.device, sampler.num_workers))
    eval_sampler = TrialSampler(suite, min(hp.eval_tasks, 64), horizon=hp.horizon,
                                episodes_per_trial=hp.episodes_per_trial, seed=spec.seed + 10_000)
    task_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 7]))

    run_dir.mkdir(parents=True, exist_ok=True)
    if checkpoint is None:
        atomic_write_bytes(config_path, yaml.safe_dump(spec.to_yaml(), sort_keys=False).encode())
        env_steps, iteration, wall_offset, next_eval = 0, 0, 0.0, 0
        latest_test = None
        with open(progress_path, "w", newline="") as handle:
            csv.writer(handle).writerow(PROGRESS_COLUMNS)
        metrics_path.unlink(missing_ok=True)  # its header comes with the first iteration
        log.info("training %s on %s, seed %d, %d env steps, device %s, %d CPU threads -> %s",
                 spec.agent, spec.env, spec.seed, hp.steps, spec.device, torch.get_num_threads(),
                 run_dir)
    else:
        _restore_agent(agent, checkpoint, checkpoint_path)
        task_rng.bit_generator.state = checkpoint["task_rng"]
        sampler.calls = checkpoint["sampler_calls"]
        env_steps, iteration = checkpoint["env_steps"], checkpoint["iteration"]
        wall_offset, next_eval = checkpoint["wall_s"], checkpoint["next_eval"]
        latest_test = checkpoint.get("latest_test")
        if next_eval == math.inf and env_steps < hp.steps:  # a finished run given a larger budget
            next_eval = env_steps + hp.eval_every
        with open(progress_path, "r+b") as handle:  # drop rows written after the checkpoint
            handle.truncate(checkpoint["progress_bytes"])
        if metrics_path.exists():
            with open(metrics_path, "r+b") as handle:
                handle.truncate(checkpoint.get("metrics_bytes", 0))
        config = yaml.safe_load(config_path.read_text())
        current = cfg.to_dict(hp)
        # record new operational values and keys the run predates (at their defaults)
        update = {k: v for k, v in current.items()
                  if k in OPERATIONAL_KEYS or k not in config["hyperparameters"]}
        if any(config["hyperparameters"].get(k, object()) != v for k, v in update.items()):
            config["hyperparameters"].update(update)
            atomic_write_bytes(config_path, yaml.safe_dump(config, sort_keys=False).encode())
        log.info("resuming %s at env step %d of %d, device %s, %d CPU threads", run_dir,
                 env_steps, hp.steps, spec.device, torch.get_num_threads())

    started = time.perf_counter()
    last_checkpoint = started
    progress = _Progress(hp.steps, env_steps)

    def wall() -> float:
        return wall_offset + time.perf_counter() - started

    def save_checkpoint() -> None:
        state = {"format": CHECKPOINT_FORMAT, "agent": spec.agent, "env": spec.env,
                 "seed": spec.seed, "agent_state": agent.state_dict(),
                 "task_rng": task_rng.bit_generator.state, "sampler_calls": sampler.calls,
                 "env_steps": env_steps, "iteration": iteration, "next_eval": next_eval,
                 "wall_s": wall(), "steps": hp.steps, "latest_test": latest_test,
                 "progress_bytes": progress_path.stat().st_size,
                 "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())

    stop = _StopOnSigterm()
    stop.install()
    try:
        while env_steps < hp.steps or next_eval <= env_steps:
            rows = []
            if next_eval <= env_steps:  # evaluate at 0, eval_every, ... and at the end
                returns, success = evaluate_on_test(agent, eval_sampler, spec.seed)
                latest_test = float(returns.mean())
                rows += _progress_rows(env_steps, wall(), "test", returns, success)
                next_eval = env_steps + hp.eval_every if env_steps < hp.steps else math.inf
            if env_steps < hp.steps:
                tasks = suite.sample_tasks(task_rng, hp.trials_per_update, spec.seed)
                try:
                    result = agent.train_iteration(sampler, tasks)
                except FloatingPointError as error:
                    raise TrainingDiverged(
                        f"training diverged at env step {env_steps}: {error}; the last good "
                        f"checkpoint is kept in {checkpoint_path}") from None
                env_steps += result.env_steps
                iteration += 1
                rows += _progress_rows(env_steps, wall(), "train", result.episode_return,
                                       result.episode_success)
                _append_metrics(metrics_path, env_steps, iteration, wall(), result.metrics)
                if env_steps >= hp.steps:
                    next_eval = min(next_eval, env_steps)  # always end with an evaluation
            with open(progress_path, "a", newline="") as handle:
                csv.writer(handle).writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            progress.update(env_steps, latest_test)
            done = env_steps >= hp.steps and next_eval > env_steps
            if done or stop.requested or \
                    time.perf_counter() - last_checkpoint >= hp.checkpoint_every_s:
                save_checkpoint()
                last_checkpoint = time.perf_counter()
            if stop.requested and not done:
                raise Terminated(f"terminated by SIGTERM at env step {env_steps} of "
                                 f"{hp.steps}, checkpoint saved: run the same command to "
                                 "resume")
    except Exception as error:
        # the sampler's workers ignore SIGTERM, but one may still die meanwhile (killed outright,
        # out of memory): still a termination (a scheduler may run the job again), not an error
        if stop.requested and not isinstance(error, (Terminated, TrainingDiverged, UserError)):
            raise Terminated(f"terminated by SIGTERM at env step {env_steps} of {hp.steps} "
                             f"({type(error).__name__}: {error}); the run resumes from its last "
                             "checkpoint") from error
        raise
    finally:
        stop.uninstall()
        progress.close()
        sampler.close()
        eval_sampler.close()
        agent.close()
    log.info("done: %d env steps in %s, final test return %.2f", env_steps,
             format_duration(wall()), latest_test if latest_test is not None else float("nan"))
    return {"env_steps": env_steps, "iterations": iteration, "wall_s": wall(),
            "test_return": latest_test}


def load_run(run_dir: Path | str, device: str = "auto") -> tuple[RunSpec, Agent]:
    """The spec and the trained agent of a run directory (for evaluation)."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    config = yaml.safe_load(config_path.read_text())
    hp_values = config["hyperparameters"]
    spec = RunSpec(config["agent"], config["env"], int(config["seed"]), resolve_device(device),
                   cfg.build(agent_class(config["agent"]).config_class, hp_values),
                   int(config.get("defaults_version", 0)))
    checkpoint_path = run_dir / "checkpoint.pt"
    if not checkpoint_path.exists():
        raise RunError(f"{run_dir} has no checkpoint.pt: train it first")
    state = _load_checkpoint(checkpoint_path, spec)
    agent = build_agent(spec)
    _restore_agent(agent, state, checkpoint_path)
    return spec, agent


def _restore_agent(agent: Agent, state: dict[str, Any], path: Path) -> None:
    try:
        agent.load_state_dict(state["agent_state"])
    except (RuntimeError, KeyError, ValueError) as error:
        first = str(error).strip().splitlines()[0]
        raise RunError(f"checkpoint {path} does not fit the agent {agent.name!r} of this "
                       f"trmrl version ({first}); it was written by another version") from None


__all__ = ["PROGRESS_COLUMNS", "RunError", "RunSpec", "TrainingDiverged", "load_run", "resolve",
           "train", "SuiteError"]
