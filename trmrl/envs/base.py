"""The task-suite interface every meta-RL environment family implements.

A *suite* is a task distribution with fixed splits (``train``, ``test`` and, where defined,
``ood``) and a gymnasium env per task. Agents, samplers and the workflow only use what is
declared here, so a new suite plugs in by subclassing :class:`TaskSuite`.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from trmrl.errors import UserError

SPLITS = ("train", "test", "ood")
NUM_EVAL_TASKS = 20  # held-out tasks per evaluation split, as in the paper


class SuiteError(UserError):
    """Bad user input about suites, splits or tasks (the CLI turns it into exit code 2)."""


class EnvStepError(Exception):
    """``envs[index]`` failed in :meth:`TaskSuite.step_batch`; its error is ``__cause__``."""

    def __init__(self, index: int):
        super().__init__(f"env {index} of the batch failed to step")
        self.index = index


@dataclass(frozen=True)
class Task:
    """One task of a suite: enough to rebuild the env exactly, and JSON-serialisable."""

    env: str  # suite name, e.g. "cheetah-vel"
    split: str  # "train" | "test" | "ood"
    index: int  # position in its split (or in the seed's stream for sampled train tasks)
    params: dict[str, Any] = field(compare=False)  # what set_task needs (floats, lists, str)
    label: str = ""  # short human description, e.g. "v*=1.25"
    value: float = float("nan")  # scalar summary: `task_param` in eval tables, colour of latent maps

    def to_json(self) -> dict[str, Any]:
        return {"env": self.env, "split": self.split, "index": self.index,
                "label": self.label, "value": self.value, "params": self.params}


class TaskEnv(gym.Env):
    """A gymnasium env whose task can be switched in place (cheap, no model reload).

    ``reset`` must be called after ``set_task``. Episode length is *not* limited here: the
    trial sampler enforces the suite's horizon and reports truncation itself.
    ``info["success"]`` is set on every step by suites with ``has_success``.
    """

    task: Task | None = None

    @abc.abstractmethod
    def set_task(self, task: Task) -> None: ...


class TaskSuite(abc.ABC):
    """A meta-RL task distribution with fixed splits and a gymnasium env per task."""

    name: ClassVar[str]
    base: ClassVar[str]  # the underlying simulator model or benchmark, for `trmrl envs`
    horizon: ClassVar[int]  # steps per episode
    episodes_per_trial: ClassVar[int]  # K: episodes on one task with memory kept
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    has_success: ClassVar[bool] = False
    task_param: ClassVar[str]  # what Task.value means, e.g. "target velocity (m/s)"
    description: ClassVar[dict[str, str]]  # task, reward, train, test, ood (where defined), done
    quirks: ClassVar[tuple[str, ...]] = ()

    # -- splits ---------------------------------------------------------------------------
    @abc.abstractmethod
    def tasks(self, split: str, seed: int, n: int | None = None) -> list[Task]:
        """The tasks of a split, identical for the same seed.

        Fixed splits return their whole list (``n`` truncates it). Splits drawn fresh during
        training ("sampled") return the first ``n`` tasks (default 20) of the seed's stream,
        which is what :meth:`sample_tasks` produces for a generator seeded the same way.
        """

    @abc.abstractmethod
    def sample_tasks(self, rng: np.random.Generator, n: int, seed: int = 0) -> list[Task]:
        """Draw ``n`` training tasks (what meta-training sees, trial by trial).

        ``seed`` names the train split for suites whose train split is a fixed pool
        (Meta-World, discrete directions); ``rng`` draws from it.
        """

    def eval_tasks(self, split: str, seed: int, n: int = NUM_EVAL_TASKS) -> list[Task]:
        """The held-out tasks an evaluation protocol runs on (20 by default)."""
        return self.tasks(split, seed, n)

    def task_features(self, task: Task) -> np.ndarray:
        """The task parameters as a vector: what the ``oracle`` reference agent observes."""
        return np.atleast_1d(np.asarray(task.value, np.float32))

    # -- envs ----------------------------------------------------------------------------
    @abc.abstractmethod
    def make_env(self, task: Task | None = None) -> TaskEnv:
        """A fresh env; with ``task`` it is already set to it."""

    def step_batch(self, envs: list[TaskEnv], actions: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """Step ``envs[i]`` with ``actions[i]`` (n >= 1): how the trial sampler steps its envs.

        Returns ``(obs [n, obs_dim] float64, reward [n] float64, terminated [n] bool,
        success [n] float64)``, success None without ``has_success``; truncation and the info
        dicts are left out (the sampler enforces the horizon). The results must equal
        ``envs[i].step(actions[i])`` one env at a time bit for bit, which is what this default
        does; suites override it to cut the per-env Python around the physics. An error of one
        env is raised as :class:`EnvStepError` naming its index, from the error.
        """
        n = len(envs)
        if len(actions) != n:
            raise ValueError(f"{self.name}: {len(actions)} actions for {n} envs")
        obs, reward = np.empty((n, self.observation_dim)), np.empty(n)
        terminated, success = np.empty(n, np.bool_), np.empty(n) if self.has_success else None
        for i, (env, action) in enumerate(zip(envs, actions)):
            try:
                obs[i], reward[i], terminated[i], _, info = env.step(action)
                if success is not None:
                    success[i] = info["success"]
            except Exception as error:
                raise EnvStepError(i) from error
        return obs, reward, terminated, success

    @property
    def observation_dim(self) -> int:
        return math.prod(self.spaces()[0].shape)  # math: step_batch reads it every step

    @property
    def action_dim(self) -> int:
        return math.prod(self.spaces()[1].shape)

    def spaces(self) -> tuple[gym.spaces.Box, gym.spaces.Box]:
        """(observation space, action space), computed once per suite instance."""
        if not hasattr(self, "_spaces"):
            env = self.make_env()
            self._spaces = (env.observation_space, env.action_space)
            env.close()
        return self._spaces

    # -- helpers ---------------------------------------------------------------------------
    def check_split(self, split: str) -> None:
        if split not in self.splits:
            raise SuiteError(
                f"env {self.name!r} has no split {split!r}; its splits are: {', '.join(self.splits)}")

    def info(self) -> dict[str, Any]:
        """What `trmrl envs` shows."""
        obs_space, act_space = self.spaces()
        return {
            "name": self.name, "base": self.base,
            "obs_dim": int(np.prod(obs_space.shape)), "act_dim": int(np.prod(act_space.shape)),
            "horizon": self.horizon, "episodes_per_trial": self.episodes_per_trial,
            "splits": list(self.splits), "success_metric": self.has_success,
            "task_param": self.task_param, "description": dict(self.description),
            "quirks": list(self.quirks),
        }


def check_positive(name: str, value) -> int:
    """``value`` as an int if it is a positive integer, else a SuiteError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise SuiteError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Independent generator per (seed, split): test tasks never depend on train draws."""
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise SuiteError(f"seed must be an integer, got {seed!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), SPLITS.index(split) + 1]))
