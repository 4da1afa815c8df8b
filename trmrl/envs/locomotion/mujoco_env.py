"""The MuJoCo env and the suite base every locomotion suite shares.

One :class:`MujocoTaskEnv` class serves every suite, parameterised by a :class:`Body` (model
file, frame skip, reset noise, what velocities are measured on) and by its suite
(observation, reward and termination). Stepping is written once, batched:
:meth:`LocomotionSuite.step_with_rewards` steps a list of envs, and both the trial sampler
(:meth:`LocomotionSuite.step_batch`) and the gymnasium API (:meth:`MujocoTaskEnv.step`, a
batch of one) go through it. A suite's reward is likewise one function over a batch,
:meth:`LocomotionSuite.reward_batch`.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, NamedTuple

import gymnasium as gym
import mujoco
import numpy as np

from trmrl.envs.base import (NUM_EVAL_TASKS, EnvStepError, SuiteError, Task, TaskEnv, TaskSuite,
                              check_positive, split_rng)

# gymnasium ships the XML files; locating them via the spec avoids importing its MujocoEnv
_ASSETS = Path(importlib.util.find_spec("gymnasium.envs.mujoco").origin).parent / "assets"

DEFAULT_TRAIN_TASKS = 20  # what tasks("train", seed) returns without n


@functools.cache
def base_model(xml_file: str) -> mujoco.MjModel:
    """The compiled model, once per process. Shared read-only; *-params envs copy it."""
    return mujoco.MjModel.from_xml_path(str(_ASSETS / xml_file))


# ---------------------------------------------------------------------------------------
# Bodies and the env
# ---------------------------------------------------------------------------------------
def root_x(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # planar bodies: qpos[0] is the torso's x slide joint (what the literature differentiates)
    return data.qpos[:1].copy()


def root_xy(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # Ant: the free joint's position *is* the torso position, and unlike data.xpos it is
    # already integrated to the end of the step
    return data.qpos[:2].copy()


# bodies whose position is the root joint's first qpos entries: stepping reads them off a
# cached view of qpos instead of calling the function
_ROOT_POSITION_DIMS = {root_x: 1, root_xy: 2}


def _is_live_view(array: np.ndarray) -> bool:
    """Whether ``array`` views memory that MuJoCo owns (not a numpy temporary, e.g. a clip)."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return not array.flags.owndata


@dataclass(frozen=True)
class Body:
    """One MuJoCo body model and how it is simulated (gymnasium v5 settings)."""

    xml_file: str
    frame_skip: int
    noise_scale: float  # qpos += U(-s, s); qvel as below
    gaussian_qvel_noise: bool  # HalfCheetah/Ant: qvel += s*N(0,1); the others: U(-s, s)
    contact_forces: bool  # rewards or observations read cfrc_ext, which MuJoCo fills on request
    position: Callable[[mujoco.MjModel, mujoco.MjData], np.ndarray]  # what velocity measures


class Rewards(NamedTuple):
    """What :meth:`LocomotionSuite.reward_batch` returns for a batch of n envs."""

    reward: np.ndarray  # [n] float64
    terminated: np.ndarray  # [n] bool
    # the reward's terms by name, [n] arrays or one float for every env: MujocoTaskEnv.step's info
    components: dict[str, np.ndarray | float]


class MujocoTaskEnv(TaskEnv):
    """A locomotion env of one suite; ``model`` and ``data`` are the live MuJoCo structures."""

    metadata = {"render_modes": []}

    def __init__(self, suite: LocomotionSuite, task: Task | None = None):
        self.suite = suite
        self.body = body = suite.body
        base = base_model(body.xml_file)
        # set_task of the *-params suites rescales model arrays, so those envs own a copy
        self.model = copy.deepcopy(base) if suite.rescales_model else base
        self.data = mujoco.MjData(self.model)
        self.dt = self.model.opt.timestep * body.frame_skip
        self.torso_id = self.model.body("torso").id

        ctrl_range = self.model.actuator_ctrlrange
        self._ctrl_low, self._ctrl_high = ctrl_range[:, 0].copy(), ctrl_range[:, 1].copy()
        self.action_space = gym.spaces.Box(self._ctrl_low.astype(np.float32),
                                           self._ctrl_high.astype(np.float32), dtype=np.float32)
        mujoco.mj_forward(self.model, self.data)  # so that the observation size can be read off
        parts = suite.observation_parts(self)
        obs_dim = sum(part.size for part in parts)
        # for stepping: views into this env's MuJoCo arrays stay valid for its lifetime, so
        # they are made once (each `data.qpos` access builds a new view)
        self.ctrl_view = self.data.ctrl
        root_dims = _ROOT_POSITION_DIMS.get(body.position)  # None: body.position computes it
        self.position_view = None if root_dims is None else self.data.qpos[:root_dims]
        self.observation_views = parts if all(_is_live_view(part) for part in parts) else None
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), dtype=np.float64)

        self.task = None
        self._needs_reset = True
        if task is not None:
            self.set_task(task)

    def set_task(self, task: Task) -> None:
        if not isinstance(task, Task) or task.env != self.suite.name:
            got = task.env if isinstance(task, Task) else type(task).__name__
            raise SuiteError(f"env {self.suite.name!r} cannot run a task of {got!r}; "
                             f"expected a Task with env={self.suite.name!r}")
        self.suite.apply_task(self, task)
        self.task = task
        self._needs_reset = True

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        model, data, rng, scale = self.model, self.data, self.np_random, self.body.noise_scale
        mujoco.mj_resetData(model, data)
        data.qpos[:] = model.qpos0 + rng.uniform(-scale, scale, model.nq)
        if self.body.gaussian_qvel_noise:
            data.qvel[:] = scale * rng.standard_normal(model.nv)
        else:
            data.qvel[:] = rng.uniform(-scale, scale, model.nv)
        mujoco.mj_forward(model, data)
        if self.body.contact_forces:
            mujoco.mj_rnePostConstraint(model, data)
        self._needs_reset = False
        info = {} if self.task is None else {"task_value": self.task.value}
        return self.suite.observe(self), info

    def _check_ready(self) -> None:
        if self.task is None:
            raise RuntimeError(f"{self.suite.name}: call set_task(task) before step()")
        if self._needs_reset:
            raise RuntimeError(f"{self.suite.name}: call reset() before step() "
                               "(needed first and after every set_task)")

    def step(self, action):
        """The gymnasium step: the suite's batched step on a batch of this env alone."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self._ctrl_low.shape:
            raise ValueError(f"{self.suite.name}: action must have {self._ctrl_low.size} "
                             f"elements, got {action.size}")
        try:
            obs, rewards = self.suite.step_with_rewards([self], action[None])
        except EnvStepError as error:
            cause = error.__cause__
            cause.__suppress_context__ = True  # a batch of one: the env's own error says it all
            raise cause
        info = {key: float(value[0]) if isinstance(value, np.ndarray) else value
                for key, value in rewards.components.items()}
        info["task_value"] = self.task.value
        return obs[0], float(rewards.reward[0]), bool(rewards.terminated[0]), False, info


# ---------------------------------------------------------------------------------------
# Suite scaffolding
# ---------------------------------------------------------------------------------------
def _check_count(n) -> int:
    return check_positive("number of tasks", n)


class LocomotionSuite(TaskSuite):
    """A locomotion task distribution: subclasses define tasks, observation parts and the
    reward of a batch of envs (:meth:`reward_batch`)."""

    body: ClassVar[Body]
    rescales_model: ClassVar[bool] = False  # set_task changes model arrays (needs own copy)
    horizon = 200
    episodes_per_trial = 2
    has_success = False

    # -- tasks ------------------------------------------------------------------------------
    def tasks(self, split: str, seed: int, n: int | None = None) -> list[Task]:
        self.check_split(split)
        if n is not None:
            n = _check_count(n)
        rng = split_rng(seed, split)
        if split == "train":
            return self.sample_tasks(rng, n or DEFAULT_TRAIN_TASKS, seed)
        return self._fixed_tasks(split, rng)[:n]

    def sample_tasks(self, rng: np.random.Generator, n: int, seed: int = 0) -> list[Task]:
        return self._draw_tasks("train", rng, _check_count(n))

    def _fixed_tasks(self, split: str, rng: np.random.Generator) -> list[Task]:
        """The 20 tasks of a held-out split; by default drawn like training tasks."""
        return self._draw_tasks(split, rng, NUM_EVAL_TASKS)

    def _draw_tasks(self, split: str, rng: np.random.Generator, n: int) -> list[Task]:
        raise NotImplementedError

    # -- envs -------------------------------------------------------------------------------
    def make_env(self, task: Task | None = None) -> MujocoTaskEnv:
        return MujocoTaskEnv(self, task)

    def apply_task(self, env: MujocoTaskEnv, task: Task) -> None:
        """Change the simulation for ``task`` (only the *-params suites touch the model)."""

    def observation_parts(self, env: MujocoTaskEnv) -> tuple[np.ndarray, ...]:
        """The pieces of the observation, in order (1-D arrays)."""
        raise NotImplementedError

    def observe(self, env: MujocoTaskEnv) -> np.ndarray:
        return np.concatenate(self.observation_parts(env))

    def reward_batch(self, envs: list[MujocoTaskEnv], actions: np.ndarray, velocity: np.ndarray,
                     position: np.ndarray) -> Rewards:
        """The reward, termination and reward terms of each env after a step, a row per env.

        ``actions`` [n, nu] are clipped to the control range; ``velocity`` and ``position``
        [n, dims] are what the body measures (:attr:`Body.position`), at the end of the step.
        """
        raise NotImplementedError

    def step_batch(self, envs: list[MujocoTaskEnv], actions: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, None]:
        obs, rewards = self.step_with_rewards(envs, actions)
        return obs, rewards.reward, rewards.terminated, None

    def step_with_rewards(self, envs: list[MujocoTaskEnv], actions: np.ndarray
                          ) -> tuple[np.ndarray, Rewards]:
        """Step ``envs[i]`` with ``actions[i]``: (obs [n, obs_dim], :class:`Rewards`).

        Per env only what must touch its MuJoCo data; clipping, velocities and rewards once
        per batch by numpy. Actions are clipped to the actuators' ``ctrlrange`` before they
        reach the physics *and* before the control cost, so out-of-range actions are never
        rewarded or penalised beyond the bounds. An error of one env is raised as
        :class:`EnvStepError` naming its index.
        """
        body, n, first = self.body, len(envs), envs[0]
        # the first env's constants hold for all: no suite randomises ctrlrange or timestep
        low, high, nu = first._ctrl_low, first._ctrl_high, first._ctrl_low.size
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (n, nu):
            raise ValueError(f"{self.name}: actions must have shape ({n}, {nu}), "
                             f"{nu} elements per env, got {actions.shape}")
        # minimum/maximum: the same result as np.clip with a third of its overhead
        actions = np.minimum(np.maximum(actions, low), high)

        obs = np.empty((n, first.observation_space.shape[0]))
        # where velocity is measured: a cached view of the root joint's first qpos entries, or
        # the body's own function (the humanoid's mass centre)
        view = first.position_view
        dims = len(body.position(first.model, first.data)) if view is None else view.size
        position_before, position = np.empty((n, dims)), np.empty((n, dims))
        frame_skip, contact_forces, mj_step = body.frame_skip, body.contact_forces, mujoco.mj_step
        for i, (env, action) in enumerate(zip(envs, actions)):
            try:
                env._check_ready()
                model, data, view = env.model, env.data, env.position_view
                position_before[i] = body.position(model, data) if view is None else view
                env.ctrl_view[:] = action
                mj_step(model, data, frame_skip)  # positional: nstep= costs a keyword parse
                if contact_forces:  # MuJoCo >= 2 leaves cfrc_ext empty unless asked
                    mujoco.mj_rnePostConstraint(model, data)
                position[i] = body.position(model, data) if view is None else view
                views = env.observation_views
                np.concatenate(views if views is not None else self.observation_parts(env), out=obs[i])
            except Exception as error:
                raise EnvStepError(i) from error
        # velocities are displacements over one env step divided by dt = timestep * frame_skip
        velocity = (position - position_before) / first.dt
        return obs, self.reward_batch(envs, actions, velocity, position)


# ---------------------------------------------------------------------------------------
# Helpers the suites share
# ---------------------------------------------------------------------------------------
def alternating_directions(split: str, make: Callable[[str, int, float], Task]) -> list[Task]:
    # the literature's fixed evaluation set for two directions: -1, +1, -1, ...
    return [make(split, i, -1.0 if i % 2 == 0 else 1.0) for i in range(NUM_EVAL_TASKS)]


def random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    # uniform over {-1, +1}; a comparison keeps the stream prefix-stable (first n of n+k)
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def squared_norms(actions: np.ndarray) -> np.ndarray:
    # `a @ a` of every row, as a batch of BLAS dots: the sum of a row does not depend on the
    # batch it came in (np.einsum and (a * a).sum(1) add in orders that may)
    return (actions[:, None, :] @ actions[:, :, None])[:, 0, 0]


def task_params(envs: list[MujocoTaskEnv], key: str) -> np.ndarray:
    return np.array([env.task.params[key] for env in envs], dtype=np.float64)


def direction_vectors(envs: list[MujocoTaskEnv]) -> np.ndarray:
    # (cos, sin) of each task's angle through math, one angle at a time: np.cos may run a
    # SIMD kernel that rounds differently, and a row must not depend on its batch
    return np.array([(math.cos(angle), math.sin(angle)) for angle in task_params(envs, "angle")])


def no_termination(n: int) -> np.ndarray:
    return np.zeros(n, np.bool_)
