"""The agent interface that training, evaluation and the workflow use for every agent.

An agent is a :class:`~trmrl.sampling.TrialPolicy` (``reset`` per trial, ``act`` per step,
memory kept across the episodes of a trial) that can also learn: ``train_iteration``
collects trials on training tasks with a sampler and updates itself. ``state_dict`` /
``load_state_dict`` cover everything needed to resume bit-for-bit (weights, optimiser
state, random generators).
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from trmrl.errors import ConfigError
import torch

from trmrl.envs import Task, TaskSuite
from trmrl.sampling import PolicyOutput, StepInput, TrialSampler


# Upper bounds that keep a run within memory (or a budget within reason); a key is checked
# wherever an agent's config has it. Far above any published setting: they catch typos
# (an extra zero or three), not ambitious runs.
SIZE_LIMITS = {
    "steps": 10**12,  # env steps of a run: the paper's largest budget is 2e7
    "eval_every": 10**12,
    "trials_per_update": 100_000,  # trials held in memory at once by the sampler
    "horizon": 100_000,  # steps per episode
    "episodes_per_trial": 1_000,
    "num_workers": 1_024,
    "checkpoint_every_s": 7 * 86_400,  # a week
    "wm_size": 10_000,  # TrMRL's working memory: attention over it per step
    "layers": 1_000, "heads": 1_024, "d_model": 65_536, "d_ff": 262_144,
    "epochs": 100_000, "minibatch_size": 10**7, "gru_size": 65_536, "latent_dim": 65_536,
}


@dataclass
class RunConfig:
    """Settings every agent has: budget, evaluation, sampling."""

    steps: int = 20_000_000  # env-step budget of a training run (the paper's, per env)
    eval_every: int = 200_000  # env steps between evaluations on the held-out test tasks
    eval_tasks: int = 20  # test tasks per evaluation
    trials_per_update: int = 20  # trials (one task each) collected per learning iteration
    num_workers: int = 0  # sampler worker processes (0: step the envs in the trainer's process)
    # with workers: act for one half of the envs while the workers step the other half. Pays
    # with many envs per worker (512 trials on 15 workers: +17% env steps/s on an H100), costs
    # with few (20 trials on 8 workers: -17%, two policy calls per step instead of one)
    pipeline_sampling: bool = False
    horizon: int | None = None  # episode length; None: the suite's
    episodes_per_trial: int | None = None  # episodes per trial (K); None: the suite's
    checkpoint_every_s: float = 300.0  # wall-clock seconds between checkpoints
    # a named bundle of overrides from the agent's package YAML (`presets`; `trmrl agents`
    # lists them), applied over the env's defaults; "": none
    preset: str = ""

    def validate(self) -> None:
        for name in ("steps", "eval_every", "eval_tasks", "trials_per_update"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("horizon", "episodes_per_trial"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"checkpoint_every_s must be >= 0, got {self.checkpoint_every_s!r}")
        for name, limit in SIZE_LIMITS.items():
            value = getattr(self, name, None)
            if value is not None and value > limit:
                raise ConfigError(f"{name}={value!r} is beyond the limit {limit} (a typo? runs "
                                  "this large would not fit in memory or time)")
        # every float finite, also where a config is built without trmrl.config.build
        for name, value in vars(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")


@dataclass
class IterationResult:
    env_steps: int  # env steps this iteration consumed
    episode_return: np.ndarray  # [trials, K] returns of the training trials
    episode_success: np.ndarray  # [trials, K] (NaN where the suite has no success metric)
    metrics: dict[str, float] = field(default_factory=dict)  # losses etc., for logs


class Agent(abc.ABC):
    """Base class of every agent; subclasses set ``name``, ``config_class`` and ``defaults``."""

    name: ClassVar[str]  # as registered in the entry-point group trmrl.agents
    config_class: ClassVar[type[RunConfig]]
    # the versioned YAML of per-env defaults ({version, default, envs, presets}), as
    # "package:file" inside an importable package, so that it ships with the agent's wheel
    defaults: ClassVar[str]
    # False for agents that collect with samplers of their own (MAML's one-episode trials,
    # PEARL's prior/posterior phases): the trainer's sampler then starts no worker processes
    collects_trainer_trials: ClassVar[bool] = True

    def __init__(self, config: RunConfig, suite: TaskSuite, device: torch.device, seed: int):
        self.config, self.suite, self.device, self.seed = config, suite, device, seed

    # -- acting: the TrialPolicy protocol ------------------------------------------------
    @abc.abstractmethod
    def reset(self, num_trials: int) -> None:
        """Start ``num_trials`` new trials: clear all memory."""

    @abc.abstractmethod
    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        """Actions for one lockstep step (rows with ``step.active`` False are padding)."""

    # -- learning -------------------------------------------------------------------------
    @abc.abstractmethod
    def train_iteration(self, sampler: TrialSampler, tasks: list[Task]) -> IterationResult:
        """Collect trials on ``tasks`` and update the agent once."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def evaluation_trials(self, tasks: list[Task], episodes: int, horizon: int | None,
                          seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """An agent's own evaluation protocol, for one whose adaptation needs more data than
        one episode of a trial (MAML's inner step on many episodes): the returns and success
        rates [tasks, episodes]; None (the default) runs ordinary trials."""
        return None

    def close(self) -> None:
        """Release what the agent holds beyond memory, e.g. samplers of its own whose
        worker processes collect data in shapes the trainer's sampler does not have."""

    # Agents with an episodic memory (an embedding the policy acts on) return it in
    # ``PolicyOutput.extras["memory"]`` while ``record_memory`` is True (latent maps).
    record_memory: bool = False
