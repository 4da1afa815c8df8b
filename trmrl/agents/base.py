"""The agent interface that training, evaluation and the workflow use for every agent.

An agent is a :class:`~trmrl.sampling.TrialPolicy` (``reset`` per trial, ``act`` per step,
memory kept across the episodes of a trial) that can also learn: ``train_iteration``
collects trials on training tasks with a sampler and updates itself. ``state_dict`` /
``load_state_dict`` cover everything needed to resume bit-for-bit (weights, optimiser
state, random generators).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from trmrl.envs import Task, TaskSuite
from trmrl.sampling import PolicyOutput, StepInput, TrialSampler
from trmrl.settings import AgentConfig, TrainerSettings


@dataclass
class IterationResult:
    env_steps: int  # env steps this iteration consumed
    episode_return: np.ndarray  # [trials, K] returns of the training trials
    episode_success: np.ndarray  # [trials, K] (NaN where the suite has no success metric)
    metrics: dict[str, float] = field(default_factory=dict)  # losses etc., for logs


class Agent(abc.ABC):
    """Base class of every agent; subclasses set ``name``, ``config_class`` and ``defaults``."""

    name: ClassVar[str]  # as registered in the entry-point group trmrl.agents
    config_class: ClassVar[type[AgentConfig]]  # its hyperparameters
    # the trainer settings it takes (trmrl.settings): a subclass adds the execution switches
    # the agent honours (cuda_graphs, ...) or sets its own defaults
    settings_class: ClassVar[type[TrainerSettings]] = TrainerSettings
    # the versioned YAML of per-env defaults ({version, default, envs, presets}), as
    # "package:file" inside an importable package, so that it ships with the agent's wheel
    defaults: ClassVar[str]
    # False for agents that collect with samplers of their own (MAML's one-episode trials,
    # PEARL's prior/posterior phases): the trainer's sampler then starts no worker processes
    collects_trainer_trials: ClassVar[bool] = True

    def __init__(self, config: AgentConfig, suite: TaskSuite, device: torch.device, seed: int,
                 settings: TrainerSettings | None = None):
        """``settings``: the trainer's (None: ``settings_class()``), where an agent reads what it
        needs of them: the execution switches, the worker count of samplers of its own."""
        if settings is None:
            settings = self.settings_class()
        # any settings object with the fields the agent reads (a base class's defaults do)
        missing = [f.name for f in fields(self.settings_class) if not hasattr(settings, f.name)]
        if missing:
            raise TypeError(f"agent {self.name!r} needs trainer settings with {', '.join(missing)} "
                            f"({self.settings_class.__name__}), got {type(settings).__name__}")
        self.config, self.suite, self.device, self.seed = config, suite, device, seed
        self.settings = settings

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
