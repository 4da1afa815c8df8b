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

import contextlib
import csv
import dataclasses
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
from trmrl.envs import SuiteError, TaskSuite, check_env_name, make_suite
from trmrl.errors import ConfigError, RunError, Terminated, TrainingDiverged, UserError
from trmrl.population import Population, population_support
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
def build_agent(spec: RunSpec, suite: TaskSuite | None = None) -> Agent:
    """The agent of a run (``suite``: the env's suite, if already built: the runs of a
    population share one)."""
    suite = make_suite(spec.env) if suite is None else suite
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


@dataclass(eq=False)
class _Run:
    """One run of a train call: its spec and directory, its agent and evaluation sampler, and
    what its checkpoint holds (task stream, counters). The training loop drives a list of them:
    one for a run alone, K for a population."""

    spec: RunSpec
    dir: Path
    created: bool = False  # this call created the directory: removed if nothing was written
    checkpoint: dict[str, Any] | None = None  # the state it resumes from; None: a fresh run
    agent: Agent | None = None
    eval_sampler: TrialSampler | None = None
    task_rng: np.random.Generator | None = None
    env_steps: int = 0
    iteration: int = 0
    sampler_calls: int = 0  # calls of the training sampler so far: part of every reset seed
    wall_offset: float = 0.0  # wall_s trained by earlier sessions
    next_eval: float = 0
    latest_test: float | None = None
    unsaved: bool = False  # progress since its last checkpoint
    failed: str | None = None  # why it stopped early (its update diverged)

    @property
    def config_path(self) -> Path:
        return self.dir / CONFIG

    @property
    def progress_path(self) -> Path:
        return self.dir / PROGRESS

    @property
    def metrics_path(self) -> Path:
        return self.dir / METRICS

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    @property
    def steps(self) -> int:
        return self.spec.settings.steps

    @property
    def position(self) -> tuple[int, int]:
        """Where it is in training: runs at one position can train together."""
        return self.iteration, self.sampler_calls

    def training(self) -> bool:
        return self.failed is None and self.env_steps < self.steps

    def active(self) -> bool:
        """Training, or an evaluation still due (the one at its end)."""
        return self.failed is None and (self.env_steps < self.steps
                                        or self.next_eval <= self.env_steps)

    def checkpoint_bytes(self, wall_s: float) -> bytes:
        state = {"format": CHECKPOINT_FORMAT, "agent": self.spec.agent, "env": self.spec.env,
                 "seed": self.spec.seed, "agent_state": self.agent.state_dict(),
                 "task_rng": self.task_rng.bit_generator.state, "sampler_calls": self.sampler_calls,
                 "env_steps": self.env_steps, "iteration": self.iteration,
                 "next_eval": self.next_eval, "wall_s": wall_s, "steps": self.steps,
                 "latest_test": self.latest_test,
                 "progress_bytes": self.progress_path.stat().st_size,
                 "metrics_bytes": (self.metrics_path.stat().st_size
                                   if self.metrics_path.exists() else 0)}
        buffer = io.BytesIO()
        torch.save(state, buffer)
        return buffer.getvalue()


def _save_checkpoints(runs: list[_Run], wall_s: list[float]) -> None:
    """Each run's checkpoint, written atomically (tmp file + rename); the renames of several
    runs follow each other only once every file is written, so that a kill rarely leaves the
    members of a population at different iterations (a resume would handle it: the runs behind
    catch up first)."""
    temporary = []
    try:
        for run, wall in zip(runs, wall_s):
            tmp = run.checkpoint_path.with_name(CHECKPOINT + ".tmp")
            temporary.append(tmp)
            with open(tmp, "wb") as handle:
                handle.write(run.checkpoint_bytes(wall))
                handle.flush()
                os.fsync(handle.fileno())
        for run, tmp in zip(runs, temporary):
            os.replace(tmp, run.checkpoint_path)
            run.unsaved = False
    except BaseException:  # a full disk, a KeyboardInterrupt: leave no half file
        for tmp in temporary:
            tmp.unlink(missing_ok=True)
        raise


def check_population(specs: list[RunSpec], run_dirs: list[Path]) -> None:
    """Several runs in one process: one agent x env with equal hyperparameters and trainer
    settings, distinct seeds and directories, and an agent that can form a population."""
    first = specs[0]
    seeds = [spec.seed for spec in specs]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"--seed {' '.join(map(str, seeds))}: seed {repeated[0]} is given twice; "
                          "each seed once")
    resolved = [d.resolve() for d in run_dirs]
    for i, path in enumerate(resolved):
        if path in resolved[:i]:
            raise ConfigError(f"seeds {seeds[resolved.index(path)]} and {seeds[i]} would share the "
                              f"run directory {run_dirs[i]}; put {{seed}} in --out")
    for spec in specs[1:]:
        same = (spec.agent, spec.env, spec.device) == (first.agent, first.env, first.device) and \
            cfg.flatten(spec.settings, spec.hyperparameters) == cfg.flatten(first.settings,
                                                                            first.hyperparameters)
        if not same:
            raise ConfigError(f"seed {spec.seed} differs from seed {first.seed} in more than its "
                              "seed: runs trained in one process share agent, env, device and "
                              "every hyperparameter")
    reason = population_support(agent_class(first.agent))
    if reason is not None:
        raise ConfigError(f"agent {first.agent} cannot train several seeds in one process: "
                          f"{reason}; train each seed on its own (one --seed per `trmrl train`)")


def train(spec: RunSpec, run_dir: Path | str) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns a summary dict.

    The run directory's lock is held throughout: a second train or an evaluate of the same
    directory is refused (RunError) while this one runs. A directory this call created is
    removed again if the run fails before its config.yaml is written."""
    return train_runs([spec], [run_dir])[0]


def uncompiled(spec: RunSpec) -> RunSpec:
    """The spec with the trainer setting torch_compile off: a population calls its members'
    models through torch.func, which a compiled model does not serve (its CUDA graphs replay
    the uncompiled model). The run's config.yaml records the setting it ran with."""
    settings = spec.settings
    if not (getattr(settings, "torch_compile", False) and spec.device.startswith("cuda")):
        return spec  # off the GPU the setting does nothing
    log.info("seed %d: torch_compile off (several seeds in one process run uncompiled)", spec.seed)
    return dataclasses.replace(spec, settings=dataclasses.replace(settings, torch_compile=False))


def train_runs(specs: list[RunSpec], run_dirs: list[Path | str]) -> list[dict[str, Any]]:
    """Train (or resume) runs of one agent x env that differ only by seed, each in its own
    ordinary run directory, in one process; returns a summary dict per run.

    One run trains alone (:func:`train`); several train as a population
    (:class:`trmrl.population.Population`: one sampler steps every run's trials, the updates
    run batched). Each run keeps its own lock (all taken before anything starts), task stream,
    evaluations and checkpoint, so a run trained in a population resumes alone and vice
    versa. Runs whose checkpoints are at different iterations first bring the ones behind up
    to the furthest in smaller populations, then go on together. A run whose update diverges
    stops alone (its directory keeps its last good checkpoint); TrainingDiverged is raised
    once the others have finished."""
    if len(specs) != len(run_dirs) or not specs:
        raise ValueError(f"{len(specs)} specs for {len(run_dirs)} run directories")
    if len(specs) > 1:
        specs = [uncompiled(spec) for spec in specs]
    runs = [_Run(spec, Path(run_dir)) for spec, run_dir in zip(specs, run_dirs)]
    if len(runs) > 1:
        check_population(specs, [run.dir for run in runs])
    for run in runs:  # every directory checked before any is created or locked
        check_dir_writable(run.dir, "--out")
        if not run.config_path.exists() and not is_fresh(run.dir):  # not ours: touch nothing
            raise RunError(f"{run.dir} exists and is not a trmrl run directory; use another --out")
    with contextlib.ExitStack() as locks:
        try:
            for run in runs:
                run.created = not run.dir.exists()
                try:
                    run.dir.mkdir(parents=True, exist_ok=True)
                except OSError as error:
                    raise UserError(f"--out {run.dir}: cannot create it "
                                    f"({error.strerror})") from None
                locks.enter_context(RunLock(run.dir))
            return _train_locked(runs)
        except BaseException:
            for run in runs:
                if run.created and is_fresh(run.dir):  # nothing of the run was written: no trace
                    for entry in run.dir.iterdir():
                        entry.unlink(missing_ok=True)
                    run.dir.rmdir()
            raise


def _open_run_dir(run: _Run) -> None:
    """Check a locked directory against the run, clear leftovers, load its checkpoint."""
    spec, run_dir = run.spec, run.dir
    if run.config_path.exists():
        _check_existing_run(run_dir, spec)
    elif not is_fresh(run_dir):
        raise RunError(f"{run_dir} exists and is not a trmrl run directory; use another --out")
    remove_leftovers(run_dir)  # temp files of writes a killed run did not finish
    if run.checkpoint_path.exists():
        run.checkpoint = checkpoint = _load_checkpoint(run.checkpoint_path, spec)
        trained, budget = checkpoint["env_steps"], checkpoint.get("steps", run.steps)
        # a budget below what the run has trained, and below the budget it trained for
        # (a finished run may overshoot its own budget by part of an iteration)
        if run.steps < trained and run.steps < budget:
            raise RunError(f"--steps {run.steps} is less than the {trained} env steps {run_dir} "
                           f"has trained; give --steps {trained} or more, or use another --out")
        run.iteration, run.sampler_calls = checkpoint["iteration"], checkpoint["sampler_calls"]
        run.env_steps, run.next_eval = checkpoint["env_steps"], checkpoint["next_eval"]
        if run.next_eval == math.inf and run.env_steps < run.steps:  # finished: a larger budget
            run.next_eval = run.env_steps + run.spec.hyperparameters.eval_every


def _start_run(run: _Run) -> None:
    """Write a fresh run's config.yaml and file headers, or restore a resumed run's state."""
    spec, checkpoint = run.spec, run.checkpoint
    hp, settings = spec.hyperparameters, spec.settings
    if checkpoint is None:
        config = yaml.safe_dump(spec.to_yaml(), sort_keys=False).encode()
        atomic_write_bytes(run.config_path, config)
        with open(run.progress_path, "w", newline="") as handle:
            csv.writer(handle).writerow(PROGRESS_COLUMNS)
        run.metrics_path.unlink(missing_ok=True)  # its header comes with the first iteration
        log.info("training %s on %s, seed %d, %d env steps, device %s, %d CPU threads -> %s",
                 spec.agent, spec.env, spec.seed, settings.steps, spec.device,
                 torch.get_num_threads(), run.dir)
        return
    _restore_agent(run.agent, checkpoint, run.checkpoint_path)
    run.task_rng.bit_generator.state = checkpoint["task_rng"]
    run.wall_offset, run.latest_test = checkpoint["wall_s"], checkpoint.get("latest_test")
    _restore_progress(run.progress_path, checkpoint)  # drop rows written after the checkpoint
    _restore_metrics(run.metrics_path, checkpoint)
    config = yaml.safe_load(run.config_path.read_text())
    # record the trainer settings of this session and hyperparameters the run predates (at
    # their defaults)
    update = {**cfg.to_dict(settings), **{k: v for k, v in cfg.to_dict(hp).items()
                                          if k not in config["hyperparameters"]}}
    if any(config["hyperparameters"].get(k, object()) != v for k, v in update.items()):
        config["hyperparameters"].update(update)
        atomic_write_bytes(run.config_path, yaml.safe_dump(config, sort_keys=False).encode())
    log.info("resuming %s at env step %d of %d, device %s, %d CPU threads", run.dir,
             run.env_steps, settings.steps, spec.device, torch.get_num_threads())


class _Collector:
    """The training sampler and the policy of the runs that train together: one agent alone,
    or a Population of several whose trials one sampler of their seeds steps. Rebuilt when
    that group changes (runs catching up with the others after a resume, a run that finished
    early or diverged)."""

    def __init__(self, suite: TaskSuite, spec: RunSpec, num_workers: int):
        self.suite, self.hp, self.settings = suite, spec.hyperparameters, spec.settings
        self.num_workers = num_workers
        self.group: list[_Run] = []
        self.sampler: TrialSampler | None = None
        self.policy = None

    def bind(self, group: list[_Run]) -> None:
        if [id(run) for run in group] == [id(run) for run in self.group]:
            return
        self.close()
        hp, settings = self.hp, self.settings
        seeds = [run.spec.seed for run in group]
        self.sampler = TrialSampler(self.suite, hp.trials_per_update * len(group),
                                    horizon=hp.horizon, episodes_per_trial=hp.episodes_per_trial,
                                    num_workers=self.num_workers,
                                    seed=seeds[0] if len(group) == 1 else seeds,
                                    pipeline=settings.pipeline_sampling)
        if len(group) == 1:
            self.policy = group[0].agent
        else:
            self.policy = Population([run.agent for run in group])
        self.group = list(group)

    def iterate(self, group: list[_Run]) -> list[Any]:
        """One learning iteration of every run of ``group`` (all at one position): each run's
        IterationResult, or the FloatingPointError of a run whose update diverged."""
        self.bind(group)
        self.sampler.calls = group[0].sampler_calls
        # member-major: each run's own tasks, as it samples them alone
        tasks = [task for run in group for task in
                 self.suite.sample_tasks(run.task_rng, self.hp.trials_per_update, run.spec.seed)]
        if len(group) == 1:
            try:
                results = [self.policy.train_iteration(self.sampler, tasks)]
            except FloatingPointError as error:
                results = [error]
        else:
            results = self.policy.train_iteration(self.sampler, tasks)
        for run in group:
            run.sampler_calls = self.sampler.calls
        return results

    def close(self) -> None:
        if self.sampler is not None:
            self.sampler.close()
        self.sampler, self.policy, self.group = None, None, []


def _train_locked(runs: list[_Run]) -> list[dict[str, Any]]:
    first = runs[0].spec
    hp, settings = first.hyperparameters, first.settings
    for run in runs:
        _open_run_dir(run)

    torch.set_num_threads(available_cpus())
    suite = make_suite(first.env)
    try:
        for run in runs:
            run.agent = build_agent(run.spec, suite)
            check_against_suite(run.spec, suite)
        if len(runs) > 1:
            reason = population_support(runs[0].agent)  # e.g. a compiled model (torch_compile)
            if reason is not None:
                raise ConfigError(f"agent {first.agent} cannot train several seeds in one process "
                                  f"here: {reason}; or train each seed on its own (one --seed per "
                                  "`trmrl train`)")
    except UserError:
        for run in runs:
            if run.agent is not None:
                run.agent.close()
        raise
    collects = runs[0].agent.collects_trainer_trials
    collector = _Collector(suite, first, settings.num_workers if collects else 0)
    behind = _catching_up(runs)
    collector.bind(behind)  # the first group's sampler (and its workers) before the thread count
    torch.set_num_threads(trainer_threads(first.device, collector.num_workers))
    for run in runs:
        run.eval_sampler = TrialSampler(suite, min(hp.eval_tasks, 64), horizon=hp.horizon,
                                        episodes_per_trial=hp.episodes_per_trial,
                                        seed=run.spec.seed + 10_000)
        run.task_rng = np.random.default_rng(np.random.SeedSequence([run.spec.seed, 7]))
        _start_run(run)
    if len(runs) > 1:
        log.info("seeds %s train in one process (a population)",
                 ", ".join(str(run.spec.seed) for run in runs))
        if len(behind) < len([run for run in runs if run.active()]):
            at = ", ".join(f"{run.iteration} (seed {run.spec.seed})" for run in runs)
            log.info("checkpoints at iterations %s: the runs behind catch up first, then all go "
                     "on together", at)

    started = time.perf_counter()
    last_checkpoint = started
    progress = _Progress(settings.steps, min(run.env_steps for run in runs))

    def wall(run: _Run) -> float:
        return run.wall_offset + time.perf_counter() - started

    def lagging() -> int:  # the progress shown: the run furthest behind
        going = [run for run in runs if run.failed is None] or runs
        return min(run.env_steps for run in going)

    def latest_test() -> float | None:
        tested = [run.latest_test for run in runs
                  if run.latest_test is not None and run.failed is None]
        return float(np.mean(tested)) if tested else None

    stop = _StopOnSigterm()
    stop.install()
    try:
        while group := _catching_up(runs):
            rows: dict[int, list] = {id(run): [] for run in group}
            for run in group:
                if run.next_eval <= run.env_steps:  # evaluate at 0, eval_every, ... and at the end
                    returns, success = evaluate_on_test(run.agent, run.eval_sampler, run.spec.seed)
                    run.latest_test = float(returns.mean())
                    rows[id(run)] += _progress_rows(run.env_steps, wall(run), "test", returns,
                                                    success)
                    run.next_eval = (run.env_steps + hp.eval_every if run.env_steps < run.steps
                                     else math.inf)
            training = [run for run in group if run.training()]
            if training:
                for run, result in zip(training, collector.iterate(training)):
                    if isinstance(result, FloatingPointError):
                        _diverged(run, result, len(runs))
                        continue
                    run.env_steps += result.env_steps
                    run.iteration += 1
                    rows[id(run)] += _progress_rows(run.env_steps, wall(run), "train",
                                                    result.episode_return, result.episode_success)
                    _append_metrics(run.metrics_path, run.env_steps, run.iteration, wall(run),
                                    result.metrics)
                    if run.env_steps >= run.steps:
                        # always end with an evaluation
                        run.next_eval = min(run.next_eval, run.env_steps)
            for run in group:
                if run.failed is not None:
                    continue  # its rows since the last checkpoint go at its next resume
                with open(run.progress_path, "a", newline="") as handle:
                    csv.writer(handle).writerows(rows[id(run)])
                    handle.flush()
                    os.fsync(handle.fileno())
                run.unsaved = True
            progress.update(lagging(), latest_test())
            periodic = stop.requested or \
                time.perf_counter() - last_checkpoint >= settings.checkpoint_every_s
            saving = [run for run in runs
                      if run.failed is None and run.unsaved and (periodic or not run.active())]
            _save_checkpoints(saving, [wall(run) for run in saving])
            if periodic:
                last_checkpoint = time.perf_counter()
            if stop.requested and any(run.active() for run in runs):
                at = ", ".join(str(run.env_steps) for run in runs if run.failed is None)
                raise Terminated(f"terminated by SIGTERM at env step {at} of {settings.steps}, "
                                 "checkpoint saved: run the same command to resume")
    except Exception as error:
        # the sampler's workers ignore SIGTERM, but one may still die meanwhile (killed outright,
        # out of memory): still a termination (a scheduler may run the job again), not an error
        if stop.requested and not isinstance(error, (Terminated, TrainingDiverged, UserError)):
            raise Terminated(f"terminated by SIGTERM at env step "
                             f"{', '.join(str(run.env_steps) for run in runs)} of {settings.steps} "
                             f"({type(error).__name__}: {error}); the run resumes from its last "
                             "checkpoint") from error
        raise
    finally:
        stop.uninstall()
        progress.close()
        collector.close()
        for run in runs:
            if run.eval_sampler is not None:
                run.eval_sampler.close()
            run.agent.close()
    failed = [run for run in runs if run.failed is not None]
    for run in runs:
        if run.failed is None:
            log.info("done: %s%d env steps in %s, final test return %.2f",
                     f"seed {run.spec.seed}: " if len(runs) > 1 else "", run.env_steps,
                     format_duration(wall(run)),
                     run.latest_test if run.latest_test is not None else float("nan"))
    if failed:
        others = "" if len(failed) == len(runs) else \
            f"; the other {len(runs) - len(failed)} runs trained to the end"
        raise TrainingDiverged("; ".join(run.failed for run in failed) + others)
    return [{"env_steps": run.env_steps, "iterations": run.iteration, "wall_s": wall(run),
             "test_return": run.latest_test} for run in runs]


def _catching_up(runs: list[_Run]) -> list[_Run]:
    """The runs that go next: the active ones at the earliest position (all of them, unless
    a resume found their checkpoints at different iterations); empty when all are done."""
    active = [run for run in runs if run.active()]
    if not active:
        return []
    earliest = min(run.position for run in active)
    return [run for run in active if run.position == earliest]


def _diverged(run: _Run, error: FloatingPointError, population: int) -> None:
    kept = (f"the last good checkpoint is kept in {run.checkpoint_path}"
            if run.checkpoint_path.exists() else "no checkpoint was written yet")
    who = f"seed {run.spec.seed} ({run.dir}): " if population > 1 else ""
    run.failed = f"{who}training diverged at env step {run.env_steps}: {error}; {kept}"
    if population > 1:
        log.error("%s; it stops, the other runs go on", run.failed)


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
           "train", "train_runs", "SuiteError"]
