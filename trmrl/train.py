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
from trmrl.rundir import (CHECKPOINT, CONFIG, METRICS, PROGRESS, RunLock, check_dir_writable,
                          is_fresh, load_checkpoint_file, remove_leftovers)
from trmrl.sampling import TrialSampler
from trmrl.utils import (atomic_write_bytes, available_cpus, format_duration, git_commit,
                         trainer_threads)

log = logging.getLogger("trmrl.train")

PROGRESS_COLUMNS = ["env_steps", "wall_s", "split", "episode", "return", "success"]
CHECKPOINT_FORMAT = 1
MAX_SEED = cfg.MAX_SEED


@dataclass
class RunSpec:
    """What identifies a run, plus its resolved hyperparameters and trainer settings."""

    agent: str
    env: str
    seed: int
    device: str  # "cpu" | "cuda" | "cuda:N", resolved from "auto"
    hyperparameters: Any  # the agent's config dataclass instance: fixed for the run's life
    defaults_version: int
    settings: Any  # the agent's trainer settings (trmrl.settings): a resume may change them

    def to_yaml(self) -> dict[str, Any]:
        return {"agent": self.agent, "env": self.env, "seed": self.seed, "device": self.device,
                "trmrl_version": trmrl.__version__, "git_commit": git_commit(),
                "defaults_version": self.defaults_version,
                "hyperparameters": cfg.flatten(self.settings, self.hyperparameters)}


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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise cfg.ConfigError(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    overrides = dict(overrides or {})
    preset = overrides.get("preset", "")
    values, version = cfg.env_defaults(agent, env, preset if isinstance(preset, str) else "")
    values.update(overrides)
    if steps is not None:
        values["steps"] = steps
    settings, hyperparameters = cfg.build_run(agent_class(agent), values, source="--set")
    return RunSpec(agent, env, seed, resolve_device(device), hyperparameters, version, settings)


def check_against_suite(spec: RunSpec, suite) -> None:
    """Values that are only out of range for the env: more evaluation tasks than its test split
    holds (an error rather than a silent cap). Needs the suite, which takes a minute to build
    for ML45: checked when training starts, not by `trmrl validate`."""
    available = len(suite.eval_tasks("test", spec.seed, spec.hyperparameters.eval_tasks))
    if available < spec.hyperparameters.eval_tasks:
        raise cfg.ConfigError(f"eval_tasks={spec.hyperparameters.eval_tasks}: the test split of "
                              f"{spec.env} has {available} tasks; valid: 1..{available}")


# ---------------------------------------------------------------------------------------
# Run directory
# ---------------------------------------------------------------------------------------
def _check_existing_run(run_dir: Path, spec: RunSpec) -> None:
    """A RUN_DIR may only be resumed by the same agent/env/seed and hyperparameters (its
    trainer settings may change: how the run executes, not what it learns)."""
    path = run_dir / "config.yaml"
    old = read_run_config(path)
    old_id = (old["agent"], old["env"], int(old["seed"]))
    old_hp = old["hyperparameters"]
    if old_id != (spec.agent, spec.env, spec.seed):
        raise RunError(f"{run_dir} holds a run of agent={old_id[0]} env={old_id[1]} "
                       f"seed={old_id[2]}, not agent={spec.agent} env={spec.env} "
                       f"seed={spec.seed}; use another --out")
    new_hp = cfg.to_dict(spec.hyperparameters)
    unknown = sorted(set(old_hp) - set(cfg.run_keys(agent_class(spec.agent))))
    if unknown:
        raise RunError(f"{path} has hyperparameters this trmrl version does not know "
                       f"({', '.join(unknown)}); resume it with the version that wrote it")
    # a key added to the code after the run began: the run behaved as the key's default
    # (new hyperparameters always default to the behaviour from before they existed)
    old_hp = {**cfg.to_dict(type(spec.hyperparameters)()), **old_hp}
    changed = [k for k in new_hp if old_hp.get(k) != new_hp[k]]
    if changed:
        diffs = ", ".join(f"{k}: {old_hp.get(k)!r} -> {new_hp[k]!r}" for k in changed)
        raise RunError(f"{run_dir} was trained with other hyperparameters ({diffs}); "
                       "resume with the same --set values or use another --out")


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's config.yaml, checked for the keys a run needs (RunError otherwise)."""
    try:
        config = yaml.safe_load(path.read_text())
        if not isinstance(config, dict) or not isinstance(config.get("hyperparameters"), dict):
            raise ValueError("not a mapping with agent, env, seed and hyperparameters")
        check_agent_name(config["agent"])
        int(config["seed"])
        config["env"]
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunError(f"{path} is not a trmrl run config ({first}); use another --out") from None
    return config


# what every checkpoint holds (agent_state etc.); a file without them is not ours
CHECKPOINT_KEYS = ("format", "agent", "env", "seed", "agent_state", "task_rng", "sampler_calls",
                   "env_steps", "iteration", "wall_s", "next_eval", "progress_bytes")


def _load_checkpoint(path: Path, spec: RunSpec) -> dict[str, Any]:
    try:
        state = load_checkpoint_file(path)
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("unknown checkpoint format")
        missing = [key for key in CHECKPOINT_KEYS if key not in state]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
    except Exception as error:  # torch raises many types for a truncated/corrupt/unsafe file
        first = (str(error).strip().splitlines() or [""])[0]
        raise RunError(f"corrupt checkpoint {path} ({type(error).__name__}: {first}); "
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


def _parse_progress_row(fields: list[str]) -> int | None:
    """env_steps of a well-formed progress.csv row, None for anything else."""
    if len(fields) != len(PROGRESS_COLUMNS) or fields[2] not in ("train", "test"):
        return None
    try:
        env_steps, _, _ = int(fields[0]), float(fields[1]), int(fields[3])
        float(fields[4])
        if fields[5]:
            float(fields[5])
    except ValueError:
        return None
    return env_steps if env_steps >= 0 else None


def _csv_lines(data: bytes) -> list[list[str]] | None:
    """The CSV rows of ``data`` (None where it is not UTF-8 text)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return list(csv.reader(text.splitlines()))


def _restore_progress(path: Path, checkpoint: dict[str, Any]) -> None:
    """Drop the rows written after the checkpoint, having checked that the rows before it are
    the checkpoint's: they parse and end at its env step. A file whose bytes do not match (line
    endings converted, cut mid-line, rows edited) is rebuilt from the rows that parse."""
    env_steps, offset = checkpoint["env_steps"], checkpoint["progress_bytes"]
    if not path.exists():
        raise RunError(f"{path} is missing but {path.parent / CHECKPOINT} is at env step "
                       f"{env_steps}: restore it, or delete {CHECKPOINT} to train from scratch")
    data = path.read_bytes()
    head = _csv_lines(data[:offset]) if len(data) >= offset else None
    if head and head[0] == PROGRESS_COLUMNS and data[:offset].endswith(b"\n") and \
            all(_parse_progress_row(r) is not None for r in head[1:]) and \
            len(head) > 1 and _parse_progress_row(head[-1]) == env_steps:
        with open(path, "r+b") as handle:
            handle.truncate(offset)
        return
    # the rows the checkpoint saw: those before its env step, and those at it except a test
    # evaluation still due there (the resumed run evaluates it again)
    due = checkpoint["next_eval"] <= env_steps
    lines = _csv_lines(data.replace(b"\0", b"")) or []
    kept = []
    for fields in lines[1:]:
        steps = _parse_progress_row(fields)
        if steps is not None and (steps < env_steps or (steps == env_steps and not (due and fields[2] == "test"))):
            kept.append(fields)
    if not kept or int(kept[-1][0]) != env_steps:
        raise RunError(f"{path} does not hold the rows up to the checkpoint's env step "
                       f"{env_steps}; restore it, or delete {CHECKPOINT} to train from scratch")
    buffer = io.StringIO()
    csv.writer(buffer).writerows([PROGRESS_COLUMNS, *kept])
    atomic_write_bytes(path, buffer.getvalue().encode())
    log.warning("%s did not match its checkpoint byte for byte: rebuilt from its %d rows up to "
                "env step %d", path, len(kept), env_steps)


def _restore_metrics(path: Path, checkpoint: dict[str, Any]) -> None:
    """As for progress.csv; metrics are a log, so rows that do not parse are dropped and a
    missing file starts anew."""
    if not path.exists():
        return
    env_steps, offset = checkpoint["env_steps"], checkpoint.get("metrics_bytes", 0)
    data = path.read_bytes()
    lines = _csv_lines(data[:offset]) if len(data) >= offset else None

    def steps_of(fields, width):
        try:
            return int(fields[0]) if len(fields) == width else None
        except ValueError:
            return None

    if lines and data[:offset].endswith(b"\n") and len(lines) > 1 and \
            all(steps_of(r, len(lines[0])) is not None for r in lines[1:]) and \
            steps_of(lines[-1], len(lines[0])) == env_steps:
        with open(path, "r+b") as handle:
            handle.truncate(offset)
        return
    lines = _csv_lines(data.replace(b"\0", b"")) or []
    if not lines or lines[0][:2] != ["env_steps", "iteration"]:
        path.unlink()
        return
    kept = [r for r in lines[1:]
            if steps_of(r, len(lines[0])) is not None and steps_of(r, len(lines[0])) <= env_steps]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([lines[0], *kept])
    atomic_write_bytes(path, buffer.getvalue().encode())


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
    return agent_class(spec.agent)(spec.hyperparameters, suite, torch.device(spec.device), spec.seed,
                                   settings=spec.settings)


def evaluate_on_test(agent: Agent, sampler: TrialSampler, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic trials on the held-out test tasks, same starting states every time (or
    the agent's own protocol, as ``trmrl evaluate`` runs it)."""
    tasks = agent.suite.eval_tasks("test", seed, agent.config.eval_tasks)
    own = agent.evaluation_trials(tasks, sampler.episodes_per_trial, sampler.horizon, sampler.seed)
    if own is not None:
        return own
    batch = sampler.run(agent, tasks, deterministic=True, call=0)
    return batch.episode_return, batch.episode_success


def train(spec: RunSpec, run_dir: Path | str) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns a summary dict.

    The run directory's lock is held throughout: a second train or an evaluate of the same
    directory is refused (RunError) while this one runs. A directory this call created is
    removed again if the run fails before its config.yaml is written."""
    run_dir = Path(run_dir)
    check_dir_writable(run_dir, "--out")
    if not (run_dir / CONFIG).exists() and not is_fresh(run_dir):  # not ours: touch nothing
        raise RunError(f"{run_dir} exists and is not a trmrl run directory; use another --out")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--out {run_dir}: cannot create it ({error.strerror})") from None
    with RunLock(run_dir):
        try:
            return _train_locked(spec, run_dir)
        except BaseException:
            if created and is_fresh(run_dir):  # nothing of the run was written: leave no trace
                for entry in run_dir.iterdir():
                    entry.unlink(missing_ok=True)
                run_dir.rmdir()
            raise


def _train_locked(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    hp, settings = spec.hyperparameters, spec.settings
    config_path, progress_path = run_dir / CONFIG, run_dir / PROGRESS
    metrics_path = run_dir / METRICS
    checkpoint_path = run_dir / CHECKPOINT
    if config_path.exists():
        _check_existing_run(run_dir, spec)
    elif not is_fresh(run_dir):
        raise RunError(f"{run_dir} exists and is not a trmrl run directory; use another --out")
    remove_leftovers(run_dir)  # temp files of writes a killed run did not finish
    checkpoint = _load_checkpoint(checkpoint_path, spec) if checkpoint_path.exists() else None
    if checkpoint is not None:
        trained, budget = checkpoint["env_steps"], checkpoint.get("steps", settings.steps)
        # a budget below what the run has trained, and below the budget it trained for
        # (a finished run may overshoot its own budget by part of an iteration)
        if settings.steps < trained and settings.steps < budget:
            raise RunError(f"--steps {settings.steps} is less than the {trained} env steps {run_dir} "
                           f"has trained; give --steps {trained} or more, or use another --out")

    torch.set_num_threads(available_cpus())
    agent = build_agent(spec)
    suite = agent.suite
    try:
        check_against_suite(spec, suite)
    except UserError:
        agent.close()
        raise
    sampler = TrialSampler(suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial,
                           num_workers=settings.num_workers if agent.collects_trainer_trials else 0,
                           seed=spec.seed, pipeline=settings.pipeline_sampling)
    torch.set_num_threads(trainer_threads(spec.device, sampler.num_workers))
    eval_sampler = TrialSampler(suite, min(hp.eval_tasks, 64), horizon=hp.horizon,
                                episodes_per_trial=hp.episodes_per_trial, seed=spec.seed + 10_000)
    task_rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 7]))

    if checkpoint is None:
        atomic_write_bytes(config_path, yaml.safe_dump(spec.to_yaml(), sort_keys=False).encode())
        env_steps, iteration, wall_offset, next_eval = 0, 0, 0.0, 0
        latest_test = None
        with open(progress_path, "w", newline="") as handle:
            csv.writer(handle).writerow(PROGRESS_COLUMNS)
        metrics_path.unlink(missing_ok=True)  # its header comes with the first iteration
        log.info("training %s on %s, seed %d, %d env steps, device %s, %d CPU threads -> %s",
                 spec.agent, spec.env, spec.seed, settings.steps, spec.device, torch.get_num_threads(),
                 run_dir)
    else:
        _restore_agent(agent, checkpoint, checkpoint_path)
        task_rng.bit_generator.state = checkpoint["task_rng"]
        sampler.calls = checkpoint["sampler_calls"]
        env_steps, iteration = checkpoint["env_steps"], checkpoint["iteration"]
        wall_offset, next_eval = checkpoint["wall_s"], checkpoint["next_eval"]
        latest_test = checkpoint.get("latest_test")
        if next_eval == math.inf and env_steps < settings.steps:  # a finished run given a larger budget
            next_eval = env_steps + hp.eval_every
        _restore_progress(progress_path, checkpoint)  # drop rows written after the checkpoint
        _restore_metrics(metrics_path, checkpoint)
        config = yaml.safe_load(config_path.read_text())
        # record the trainer settings of this session and hyperparameters the run predates
        # (at their defaults)
        update = {**cfg.to_dict(settings), **{k: v for k, v in cfg.to_dict(hp).items()
                                              if k not in config["hyperparameters"]}}
        if any(config["hyperparameters"].get(k, object()) != v for k, v in update.items()):
            config["hyperparameters"].update(update)
            atomic_write_bytes(config_path, yaml.safe_dump(config, sort_keys=False).encode())
        log.info("resuming %s at env step %d of %d, device %s, %d CPU threads", run_dir,
                 env_steps, settings.steps, spec.device, torch.get_num_threads())

    started = time.perf_counter()
    last_checkpoint = started
    progress = _Progress(settings.steps, env_steps)

    def wall() -> float:
        return wall_offset + time.perf_counter() - started

    def save_checkpoint() -> None:
        state = {"format": CHECKPOINT_FORMAT, "agent": spec.agent, "env": spec.env,
                 "seed": spec.seed, "agent_state": agent.state_dict(),
                 "task_rng": task_rng.bit_generator.state, "sampler_calls": sampler.calls,
                 "env_steps": env_steps, "iteration": iteration, "next_eval": next_eval,
                 "wall_s": wall(), "steps": settings.steps, "latest_test": latest_test,
                 "progress_bytes": progress_path.stat().st_size,
                 "metrics_bytes": metrics_path.stat().st_size if metrics_path.exists() else 0}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())

    stop = _StopOnSigterm()
    stop.install()
    try:
        while env_steps < settings.steps or next_eval <= env_steps:
            rows = []
            if next_eval <= env_steps:  # evaluate at 0, eval_every, ... and at the end
                returns, success = evaluate_on_test(agent, eval_sampler, spec.seed)
                latest_test = float(returns.mean())
                rows += _progress_rows(env_steps, wall(), "test", returns, success)
                next_eval = env_steps + hp.eval_every if env_steps < settings.steps else math.inf
            if env_steps < settings.steps:
                tasks = suite.sample_tasks(task_rng, hp.trials_per_update, spec.seed)
                try:
                    result = agent.train_iteration(sampler, tasks)
                except FloatingPointError as error:
                    kept = (f"the last good checkpoint is kept in {checkpoint_path}"
                            if checkpoint_path.exists() else "no checkpoint was written yet")
                    raise TrainingDiverged(
                        f"training diverged at env step {env_steps}: {error}; {kept}") from None
                env_steps += result.env_steps
                iteration += 1
                rows += _progress_rows(env_steps, wall(), "train", result.episode_return,
                                       result.episode_success)
                _append_metrics(metrics_path, env_steps, iteration, wall(), result.metrics)
                if env_steps >= settings.steps:
                    next_eval = min(next_eval, env_steps)  # always end with an evaluation
            with open(progress_path, "a", newline="") as handle:
                csv.writer(handle).writerows(rows)
                handle.flush()
                os.fsync(handle.fileno())
            progress.update(env_steps, latest_test)
            done = env_steps >= settings.steps and next_eval > env_steps
            if done or stop.requested or \
                    time.perf_counter() - last_checkpoint >= settings.checkpoint_every_s:
                save_checkpoint()
                last_checkpoint = time.perf_counter()
            if stop.requested and not done:
                raise Terminated(f"terminated by SIGTERM at env step {env_steps} of "
                                 f"{settings.steps}, checkpoint saved: run the same command to "
                                 "resume")
    except Exception as error:
        # the sampler's workers ignore SIGTERM, but one may still die meanwhile (killed outright,
        # out of memory): still a termination (a scheduler may run the job again), not an error
        if stop.requested and not isinstance(error, (Terminated, TrainingDiverged, UserError)):
            raise Terminated(f"terminated by SIGTERM at env step {env_steps} of {settings.steps} "
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
    config_path = run_dir / CONFIG
    if not config_path.exists():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    config = read_run_config(config_path)
    check_env_name(config["env"])
    settings, hyperparameters = cfg.build_run(agent_class(config["agent"]), config["hyperparameters"],
                                              source=str(config_path))
    try:
        defaults_version = int(config.get("defaults_version", 0))
    except (TypeError, ValueError):
        raise RunError(f"{config_path}: defaults_version must be an integer, got "
                       f"{config.get('defaults_version')!r}") from None
    spec = RunSpec(config["agent"], config["env"], int(config["seed"]), resolve_device(device),
                   hyperparameters, defaults_version, settings)
    checkpoint_path = run_dir / CHECKPOINT
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
        raise RunError(f"checkpoint {path} does not fit the agent {agent.name!r} that "
                       f"{path.parent / CONFIG} describes ({first}): config.yaml was edited, or "
                       "the checkpoint was written by another trmrl version") from None


__all__ = ["PROGRESS_COLUMNS", "RunError", "RunSpec", "TrainingDiverged", "load_run", "resolve",
           "train", "SuiteError"]
