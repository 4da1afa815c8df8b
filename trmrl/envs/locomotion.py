"""MuJoCo locomotion suites of the meta-RL literature (VariBAD, PEARL, TrMRL).

cheetah-vel, cheetah-dir, ant-dir, ant-goal, humanoid-dir, walker-params, hopper-params.

The bodies are gymnasium's MuJoCo XML models, driven directly through the ``mujoco`` bindings
(no gymnasium ``MujocoEnv``): one :class:`MujocoTaskEnv` class, parameterised by a
:class:`Body` (model file, frame skip, reset noise, what velocities are measured on) and by
its suite (observation, reward and termination). Conventions shared by every suite:

* Actions are clipped to the actuators' ``ctrlrange`` (the action space) before they reach
  the physics *and* before the control cost, so out-of-range actions are never rewarded or
  penalised beyond the bounds.
* ``step`` returns ``truncated=False`` always: the trial sampler enforces the horizon.
* ``info`` holds the reward components (``forward_velocity``, ``ctrl_cost``, ...) and
  ``task_value`` (the task's :attr:`Task.value`).
* Velocities are displacements over one env step divided by ``dt = timestep * frame_skip``.
* ``reset`` must follow ``set_task`` (``step`` raises otherwise): the *-params suites rebuild
  model constants with ``mj_setConst``, which overwrites the simulation state.
* The trial sampler steps its envs through :meth:`LocomotionSuite.step_batch`: ``step``'s
  operations in the same order, bit for bit, with clipping, velocities and rewards done once
  per batch by numpy. ``step`` stays the reference (and the gymnasium API).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import gymnasium as gym
import mujoco
import numpy as np

from trmrl.envs.base import (NUM_EVAL_TASKS, EnvStepError, SuiteError, Task, TaskEnv, TaskSuite,
                              check_positive, split_rng)

# gymnasium ships the XML files; locating them via the spec avoids importing its MujocoEnv
_ASSETS = Path(importlib.util.find_spec("gymnasium.envs.mujoco").origin).parent / "assets"

DEFAULT_TRAIN_TASKS = 20  # what tasks("train", seed) returns without n


@functools.cache
def _base_model(xml_file: str) -> mujoco.MjModel:
    """The compiled model, once per process. Shared read-only; *-params envs copy it."""
    return mujoco.MjModel.from_xml_path(str(_ASSETS / xml_file))


# ---------------------------------------------------------------------------------------
# Bodies and the generic env
# ---------------------------------------------------------------------------------------
def _root_x(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # planar bodies: qpos[0] is the torso's x slide joint (what the literature differentiates)
    return data.qpos[:1].copy()


def _root_xy(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # Ant: the free joint's position *is* the torso position, and unlike data.xpos it is
    # already integrated to the end of the step
    return data.qpos[:2].copy()


def _mass_centre_xy(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # as gymnasium's humanoid mass_center(): mass-weighted mean of the bodies' centres of mass
    return (model.body_mass @ data.xipos / model.body_mass.sum())[:2]


# bodies whose position is the root joint's first qpos entries: step_batch reads them off a
# cached view of qpos instead of calling the function
_ROOT_POSITION_DIMS = {_root_x: 1, _root_xy: 2}


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


HALF_CHEETAH = Body("half_cheetah.xml", frame_skip=5, noise_scale=0.1, gaussian_qvel_noise=True,
                    contact_forces=False, position=_root_x)
ANT = Body("ant.xml", frame_skip=5, noise_scale=0.1, gaussian_qvel_noise=True,
           contact_forces=True, position=_root_xy)
HUMANOID = Body("humanoid.xml", frame_skip=5, noise_scale=1e-2, gaussian_qvel_noise=False,
                contact_forces=True, position=_mass_centre_xy)
WALKER = Body("walker2d_v5.xml", frame_skip=4, noise_scale=5e-3, gaussian_qvel_noise=False,
              contact_forces=False, position=_root_x)
HOPPER = Body("hopper.xml", frame_skip=4, noise_scale=5e-3, gaussian_qvel_noise=False,
              contact_forces=False, position=_root_x)


class MujocoTaskEnv(TaskEnv):
    """A locomotion env of one suite; ``model`` and ``data`` are the live MuJoCo structures."""

    metadata = {"render_modes": []}

    def __init__(self, suite: LocomotionSuite, task: Task | None = None):
        self.suite = suite
        self.body = body = suite.body
        base = _base_model(body.xml_file)
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
        # for step_batch: views into this env's MuJoCo arrays stay valid for its lifetime, so
        # they are made once (each `data.qpos` access builds a new view, ~0.5 us)
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
        self._check_ready()
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != self._ctrl_low.shape:
            raise ValueError(f"{self.suite.name}: action must have {self._ctrl_low.size} "
                             f"elements, got {action.size}")
        # clip to ctrlrange (minimum/maximum: same result as np.clip, a third of its overhead)
        action = np.minimum(np.maximum(action, self._ctrl_low), self._ctrl_high)

        position_before = self.body.position(self.model, self.data)
        self.data.ctrl[:] = action
        mujoco.mj_step(self.model, self.data, nstep=self.body.frame_skip)
        if self.body.contact_forces:  # MuJoCo >= 2 leaves cfrc_ext empty unless asked
            mujoco.mj_rnePostConstraint(self.model, self.data)
        position_after = self.body.position(self.model, self.data)
        velocity = (position_after - position_before) / self.dt

        reward, terminated, info = self.suite.reward(self, action, velocity, position_after)
        info["task_value"] = self.task.value
        return self.suite.observe(self), float(reward), bool(terminated), False, info


# ---------------------------------------------------------------------------------------
# Suite scaffolding
# ---------------------------------------------------------------------------------------
def _check_count(n) -> int:
    return check_positive("number of tasks", n)


class LocomotionSuite(TaskSuite):
    """A locomotion task distribution: subclasses define tasks, observation parts and reward
    (per env, and vectorised over a batch for :meth:`step_batch`)."""

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

    def reward(self, env: MujocoTaskEnv, action: np.ndarray, velocity: np.ndarray,
               position: np.ndarray) -> tuple[float, bool, dict[str, float]]:
        """(reward, terminated, reward components) after a step; ``action`` is clipped."""
        raise NotImplementedError

    def reward_batch(self, envs: list[MujocoTaskEnv], actions: np.ndarray, velocity: np.ndarray,
                     position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(reward [n], terminated [n]) of :meth:`reward` for a batch, a row per env.

        Suites override it with numpy over the batch, bit for bit equal to :meth:`reward`;
        this default calls :meth:`reward` env by env.
        """
        reward, terminated = np.empty(len(envs)), np.empty(len(envs), np.bool_)
        for i, env in enumerate(envs):
            try:
                reward[i], terminated[i], _ = self.reward(env, actions[i], velocity[i], position[i])
            except Exception as error:
                raise EnvStepError(i) from error
        return reward, terminated

    def step_batch(self, envs: list[MujocoTaskEnv], actions: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, None]:
        # MujocoTaskEnv.step's operations in its order: per env only what must touch its
        # MuJoCo data, the rest once per batch
        body, n = self.body, len(envs)
        base = _base_model(body.xml_file)  # no suite randomises ctrlrange or timestep
        actions = np.asarray(actions, dtype=np.float64)
        if actions.shape != (n, base.nu):
            raise ValueError(f"{self.name}: actions must have shape ({n}, {base.nu}), "
                             f"{base.nu} elements per env, got {actions.shape}")
        low, high = base.actuator_ctrlrange.T
        actions = np.minimum(np.maximum(actions, low), high)

        obs = np.empty((n, self.observation_dim))
        # where velocity is measured: a cached view of the root joint's first qpos entries, or
        # the body's own function (the humanoid's mass centre)
        dims = len(body.position(envs[0].model, envs[0].data))
        position_before, position = np.empty((n, dims)), np.empty((n, dims))
        frame_skip, contact_forces, mj_step = body.frame_skip, body.contact_forces, mujoco.mj_step
        for i, (env, action) in enumerate(zip(envs, actions)):
            try:
                env._check_ready()
                model, data, view = env.model, env.data, env.position_view
                position_before[i] = body.position(model, data) if view is None else view
                env.ctrl_view[:] = action
                mj_step(model, data, frame_skip)  # nstep=: +0.5 us to parse
                if contact_forces:
                    mujoco.mj_rnePostConstraint(model, data)
                position[i] = body.position(model, data) if view is None else view
                views = env.observation_views
                np.concatenate(views if views is not None else self.observation_parts(env), out=obs[i])
            except Exception as error:
                raise EnvStepError(i) from error
        velocity = (position - position_before) / (base.opt.timestep * body.frame_skip)
        reward, terminated = self.reward_batch(envs, actions, velocity, position)
        return obs, reward, terminated, None


def _alternating_directions(split: str, make: Callable[[str, int, float], Task]) -> list[Task]:
    # the literature's fixed evaluation set for two directions: -1, +1, -1, ...
    return [make(split, i, -1.0 if i % 2 == 0 else 1.0) for i in range(NUM_EVAL_TASKS)]


def _random_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    # uniform over {-1, +1}; a comparison keeps the stream prefix-stable (first n of n+k)
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def _squared_norms(actions: np.ndarray) -> np.ndarray:
    # `a @ a` of every row, bit for bit: matmul's row-times-column case calls the BLAS dot of
    # a 1-D `a @ a`, where np.einsum and (a * a).sum(1) add in other orders
    return (actions[:, None, :] @ actions[:, :, None])[:, 0, 0]


def _task_params(envs: list[MujocoTaskEnv], key: str) -> np.ndarray:
    return np.array([env.task.params[key] for env in envs], dtype=np.float64)


def _direction_vectors(envs: list[MujocoTaskEnv]) -> np.ndarray:
    # (cos, sin) of each task's angle through math, as the per-env rewards: np.cos may round
    # differently
    return np.array([(math.cos(angle), math.sin(angle)) for angle in _task_params(envs, "angle")])


def _ant_contact_cost(data: mujoco.MjData) -> float:
    return 0.5e-3 * float(np.sum(np.square(np.clip(data.cfrc_ext, -1.0, 1.0))))


def _ant_unhealthy(data: mujoco.MjData) -> bool:
    state_finite = np.isfinite(data.qpos).all() and np.isfinite(data.qvel).all()
    return not (state_finite and 0.2 <= data.qpos[2] <= 1.0)


def _humanoid_contact_cost(data: mujoco.MjData) -> float:
    return min(0.5e-6 * float(np.sum(np.square(data.cfrc_ext))), 10.0)


# ---------------------------------------------------------------------------------------
# HalfCheetah
# ---------------------------------------------------------------------------------------
class _CheetahSuite(LocomotionSuite):
    body = HALF_CHEETAH
    base = "HalfCheetah (gymnasium half_cheetah.xml, MuJoCo 3)"

    def observation_parts(self, env):
        # the meta-RL literature's 20-dim observation: positions without x, velocities, and
        # the torso's Cartesian position (data.xpos, as mujoco-py's get_body_com returned)
        data = env.data
        return data.qpos[1:], data.qvel, data.xpos[env.torso_id]


class CheetahVel(_CheetahSuite):
    name = "cheetah-vel"
    splits = ("train", "test", "ood")
    task_param = "target velocity (m/s)"
    description = {
        "task": "HalfCheetah runs forward at a target velocity v*",
        "reward": "-|v - v*| - 0.05*|a|^2, v = torso x displacement / dt",
        "train": "v* ~ U[0, 3], sampled per trial",
        "test": "20 fixed tasks per seed, v* ~ U[0, 3]",
        "ood": "20 fixed tasks per seed, v* ~ U[3, 4]",
        "done": "never (200-step episodes)",
    }
    quirks = ("observation includes the torso's xyz (data.xpos), which MuJoCo computes at the "
              "start of the last physics substep, as in mujoco-py based code",)

    def _draw_tasks(self, split, rng, n):
        low, high = (3.0, 4.0) if split == "ood" else (0.0, 3.0)
        return [Task(self.name, split, i, {"velocity": float(v)}, f"v*={v:.2f}", float(v))
                for i, v in enumerate(rng.uniform(low, high, n))]

    def reward(self, env, action, velocity, position):
        forward_velocity = float(velocity[0])
        velocity_cost = abs(forward_velocity - env.task.params["velocity"])
        ctrl_cost = 0.05 * float(action @ action)
        return (-velocity_cost - ctrl_cost, False,
                {"forward_velocity": forward_velocity, "velocity_cost": velocity_cost,
                 "ctrl_cost": ctrl_cost})

    def reward_batch(self, envs, actions, velocity, position):
        velocity_cost = np.abs(velocity[:, 0] - _task_params(envs, "velocity"))
        return -velocity_cost - 0.05 * _squared_norms(actions), np.zeros(len(envs), np.bool_)


class CheetahDir(_CheetahSuite):
    name = "cheetah-dir"
    splits = ("train", "test")
    task_param = "direction (+1 forward, -1 backward)"
    description = {
        "task": "HalfCheetah runs forward (+1) or backward (-1)",
        "reward": "dir*v - 0.05*|a|^2, v = torso x displacement / dt",
        "train": "dir uniform on {-1, +1}, sampled per trial",
        "test": "20 fixed tasks alternating -1, +1",
        "done": "never (200-step episodes)",
    }
    quirks = CheetahVel.quirks

    def _task(self, split: str, index: int, direction: float) -> Task:
        return Task(self.name, split, index, {"direction": float(direction)},
                    f"dir={direction:+.0f}", float(direction))

    def _draw_tasks(self, split, rng, n):
        return [self._task(split, i, d) for i, d in enumerate(_random_directions(rng, n))]

    def _fixed_tasks(self, split, rng):
        return _alternating_directions(split, self._task)

    def reward(self, env, action, velocity, position):
        forward_velocity = float(velocity[0])
        forward_reward = env.task.params["direction"] * forward_velocity
        ctrl_cost = 0.05 * float(action @ action)
        return (forward_reward - ctrl_cost, False,
                {"forward_velocity": forward_velocity, "forward_reward": forward_reward,
                 "ctrl_cost": ctrl_cost})

    def reward_batch(self, envs, actions, velocity, position):
        forward_reward = _task_params(envs, "direction") * velocity[:, 0]
        return forward_reward - 0.05 * _squared_norms(actions), np.zeros(len(envs), np.bool_)


# ---------------------------------------------------------------------------------------
# Ant
# ---------------------------------------------------------------------------------------
class AntDir(LocomotionSuite):
    name = "ant-dir"
    body = ANT
    base = "Ant (gymnasium ant.xml, MuJoCo 3)"
    splits = ("train", "test", "ood")
    task_param = "direction angle (rad)"
    description = {
        "task": "Ant runs in the direction (cos g, sin g) for an angle g in radians",
        "reward": "v_xy.(cos g, sin g) - 0.5*|a|^2 - 0.5e-3*sum(clip(cfrc_ext,-1,1)^2) + 1",
        "train": "g uniform on {-1, +1} (radians), sampled per trial",
        "test": "20 fixed tasks alternating g = -1, +1",
        "ood": "20 fixed tasks per seed, g ~ U[0, 2*pi)",
        "done": "state not finite or torso z outside [0.2, 1.0]",
    }
    quirks = (
        "the directions -1 and +1 are angles in radians, i.e. unit vectors (cos 1, -/+ sin 1), "
        "not the +/-x axis: the VariBAD/TrMRL ant-dir code does this and we keep it",
        "observation is qpos[2:] and qvel (27-dim): no contact forces, unlike gymnasium's Ant",
        "velocity from the torso's free-joint position (qpos[:2]), i.e. the torso position at "
        "the end of the step (data.xpos would lag one physics substep)",
    )

    def _task(self, split: str, index: int, angle: float) -> Task:
        return Task(self.name, split, index, {"angle": float(angle)}, f"angle={angle:+.2f}",
                    float(angle))

    def _draw_tasks(self, split, rng, n):
        angles = rng.uniform(0.0, 2 * np.pi, n) if split == "ood" else _random_directions(rng, n)
        return [self._task(split, i, g) for i, g in enumerate(angles)]

    def _fixed_tasks(self, split, rng):
        if split == "test":
            return _alternating_directions(split, self._task)
        return super()._fixed_tasks(split, rng)

    def task_features(self, task: Task) -> np.ndarray:
        angle = task.params["angle"]
        return np.array([np.cos(angle), np.sin(angle)], np.float32)

    def observation_parts(self, env):
        return env.data.qpos[2:], env.data.qvel

    def reward(self, env, action, velocity, position):
        angle = env.task.params["angle"]
        forward_velocity = float(velocity[0] * math.cos(angle) + velocity[1] * math.sin(angle))
        ctrl_cost = 0.5 * float(action @ action)
        contact_cost = _ant_contact_cost(env.data)
        survive_reward = 1.0
        return (forward_velocity - ctrl_cost - contact_cost + survive_reward,
                _ant_unhealthy(env.data),
                {"forward_velocity": forward_velocity, "ctrl_cost": ctrl_cost,
                 "contact_cost": contact_cost, "survive_reward": survive_reward})

    def reward_batch(self, envs, actions, velocity, position):
        direction = _direction_vectors(envs)
        forward_velocity = velocity[:, 0] * direction[:, 0] + velocity[:, 1] * direction[:, 1]
        contact_cost = np.array([_ant_contact_cost(env.data) for env in envs])
        reward = forward_velocity - 0.5 * _squared_norms(actions) - contact_cost + 1.0
        return reward, np.array([_ant_unhealthy(env.data) for env in envs], np.bool_)


class AntGoal(LocomotionSuite):
    name = "ant-goal"
    body = ANT
    base = "Ant (gymnasium ant.xml, MuJoCo 3)"
    splits = ("train", "test", "ood")
    task_param = "goal angle atan2(y, x) (rad)"
    description = {
        "task": "Ant walks to a goal position (x, y)",
        "reward": "-|xy - goal|_1 - 0.1*|a|^2 - 0.5e-3*sum(clip(cfrc_ext,-1,1)^2)",
        "train": "goal uniform in the disc of radius 3, sampled per trial",
        "test": "20 fixed tasks per seed, goal uniform in the disc of radius 3",
        "ood": "20 fixed tasks per seed, goal uniform in the annulus 3 <= r <= 4",
        "done": "never (200-step episodes)",
    }
    quirks = (
        "observation is qpos (with the torso's x, y) and qvel (29-dim): the goal task needs the "
        "position, which gymnasium's Ant drops",
        "no survival bonus and no termination, as in the VariBAD/TrMRL ant-goal code",
    )

    def _draw_tasks(self, split, rng, n):
        # one (angle, radius) row per task keeps the stream prefix-stable
        angle_u, radius_u = rng.random((n, 2)).T
        angles = 2 * np.pi * angle_u
        if split == "ood":  # uniform in area over the annulus 3..4: r^2 ~ U[9, 16]
            radii = np.sqrt(9.0 + 7.0 * radius_u)
        else:  # uniform in area over the disc of radius 3
            radii = 3.0 * np.sqrt(radius_u)
        tasks = []
        for i, (angle, radius) in enumerate(zip(angles, radii)):
            x, y = float(radius * np.cos(angle)), float(radius * np.sin(angle))
            tasks.append(Task(self.name, split, i, {"goal": [x, y]}, f"goal=({x:+.2f},{y:+.2f})",
                              math.atan2(y, x)))
        return tasks

    def task_features(self, task: Task) -> np.ndarray:
        return np.asarray(task.params["goal"], np.float32)

    def observation_parts(self, env):
        return env.data.qpos, env.data.qvel

    def reward(self, env, action, velocity, position):
        goal_x, goal_y = env.task.params["goal"]
        goal_distance = abs(float(position[0]) - goal_x) + abs(float(position[1]) - goal_y)
        ctrl_cost = 0.1 * float(action @ action)
        contact_cost = _ant_contact_cost(env.data)
        return (-goal_distance - ctrl_cost - contact_cost, False,
                {"goal_distance": goal_distance, "ctrl_cost": ctrl_cost,
                 "contact_cost": contact_cost})

    def reward_batch(self, envs, actions, velocity, position):
        goal = _task_params(envs, "goal")
        goal_distance = np.abs(position[:, 0] - goal[:, 0]) + np.abs(position[:, 1] - goal[:, 1])
        contact_cost = np.array([_ant_contact_cost(env.data) for env in envs])
        reward = -goal_distance - 0.1 * _squared_norms(actions) - contact_cost
        return reward, np.zeros(len(envs), np.bool_)


# ---------------------------------------------------------------------------------------
# Humanoid
# ---------------------------------------------------------------------------------------
class HumanoidDir(LocomotionSuite):
    name = "humanoid-dir"
    body = HUMANOID
    base = "Humanoid (gymnasium humanoid.xml, MuJoCo 3)"
    splits = ("train", "test")
    task_param = "direction angle (rad)"
    description = {
        "task": "Humanoid runs in the direction (cos t, sin t)",
        "reward": "1.25*v_com.(cos t, sin t) + 5 - 0.1*|a|^2 - min(0.5e-6*sum(cfrc_ext^2), 10)",
        "train": "t ~ U[0, 2*pi), sampled per trial",
        "test": "20 fixed tasks per seed, t ~ U[0, 2*pi)",
        "done": "torso z (qpos[2]) outside (1.0, 2.0)",
    }
    quirks = (
        "velocity of the mass centre from data.xipos, which MuJoCo computes at the start of "
        "the last physics substep (as gymnasium's Humanoid and the mujoco-py code)",
        "the alive bonus 5 is paid on every step, the terminating one included (VariBAD)",
        "the first observation of an episode already holds the contact forces (cfrc_ext); "
        "gymnasium's is zero there",
    )

    def _draw_tasks(self, split, rng, n):
        return [Task(self.name, split, i, {"angle": float(t)}, f"angle={t:.2f}", float(t))
                for i, t in enumerate(rng.uniform(0.0, 2 * np.pi, n))]

    def task_features(self, task: Task) -> np.ndarray:
        angle = task.params["angle"]
        return np.array([np.cos(angle), np.sin(angle)], np.float32)

    def observation_parts(self, env):
        # gymnasium Humanoid-v5's default observation (the world body's rows are all zero)
        data = env.data
        return (data.qpos[2:], data.qvel, data.cinert[1:].ravel(), data.cvel[1:].ravel(),
                data.qfrc_actuator[6:], data.cfrc_ext[1:].ravel())

    def reward(self, env, action, velocity, position):
        angle = env.task.params["angle"]
        forward_velocity = float(velocity[0] * math.cos(angle) + velocity[1] * math.sin(angle))
        forward_reward = 1.25 * forward_velocity
        alive_bonus = 5.0
        ctrl_cost = 0.1 * float(action @ action)
        contact_cost = _humanoid_contact_cost(env.data)
        height = env.data.qpos[2]
        return (forward_reward + alive_bonus - ctrl_cost - contact_cost,
                not (1.0 < height < 2.0),
                {"forward_velocity": forward_velocity, "forward_reward": forward_reward,
                 "alive_bonus": alive_bonus, "ctrl_cost": ctrl_cost,
                 "contact_cost": contact_cost})

    def reward_batch(self, envs, actions, velocity, position):
        direction = _direction_vectors(envs)
        forward_velocity = velocity[:, 0] * direction[:, 0] + velocity[:, 1] * direction[:, 1]
        contact_cost = np.array([_humanoid_contact_cost(env.data) for env in envs])
        reward = 1.25 * forward_velocity + 5.0 - 0.1 * _squared_norms(actions) - contact_cost
        height = np.array([env.data.qpos[2] for env in envs])
        return reward, ~((1.0 < height) & (height < 2.0))


# ---------------------------------------------------------------------------------------
# Walker2d / Hopper with random physical parameters (rand_param_envs)
# ---------------------------------------------------------------------------------------
# model array -> base of the multiplier base**e, e ~ U(-3, 3) per element
RANDOMISED_PARAMS: dict[str, float] = {
    "body_mass": 1.5, "body_inertia": 1.5, "dof_damping": 1.3, "geom_friction": 1.5}
LOG_SCALE_LIMIT = 3.0
OOD_LOG_SCALE = (3.0, 4.0)


class _RandomParamsSuite(LocomotionSuite):
    rescales_model = True
    splits = ("train", "test", "ood")
    task_param = "mean log-scale exponent over all randomised parameters"

    @classmethod
    def _description(cls, body: str, done: str) -> dict[str, str]:
        return {
            "task": f"{body} runs forward with randomised body mass, inertia, joint damping "
                    "and friction: each element x base**e (1.5 for mass, inertia, friction; "
                    "1.3 for damping)",
            "reward": "v_x + 1 - 1e-3*|a|^2",
            "train": "e ~ U(-3, 3) per element, sampled per trial",
            "test": "20 fixed tasks per seed, e ~ U(-3, 3) per element",
            "ood": "20 fixed tasks per seed, |e| ~ U(3, 4) per element with a random sign",
            "done": done,
        }

    quirks = (
        "Task.value is the mean of all exponents, a scalar summary of a high-dimensional task",
        "the exponents also cover the world body (mass 0) as in rand_param_envs, where they do "
        "nothing",
        "after rescaling, mj_setConst recomputes derived constants (subtree masses, inverse "
        "weights for constraint softness); rand_param_envs on MuJoCo 1.31 did not",
    )

    def _shapes(self) -> dict[str, tuple[int, ...]]:
        model = _base_model(self.body.xml_file)
        return {key: getattr(model, key).shape for key in RANDOMISED_PARAMS}

    def _draw_tasks(self, split, rng, n):
        shapes = self._shapes()
        tasks = []
        for i in range(n):
            exponents = {}
            for key, shape in shapes.items():
                if split == "ood":
                    magnitude = rng.uniform(*OOD_LOG_SCALE, shape)
                    exponents[key] = np.where(rng.random(shape) < 0.5, -magnitude, magnitude)
                else:
                    exponents[key] = rng.uniform(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT, shape)
            mean = float(np.concatenate([e.ravel() for e in exponents.values()]).mean())
            params = {f"{key}_exp": e.tolist() for key, e in exponents.items()}
            tasks.append(Task(self.name, split, i, params, f"mean exp={mean:+.2f}", mean))
        return tasks

    def task_features(self, task: Task) -> np.ndarray:
        return np.concatenate([np.ravel(task.params[f"{key}_exp"])
                               for key in RANDOMISED_PARAMS]).astype(np.float32)

    def apply_task(self, env, task):
        base = _base_model(self.body.xml_file)
        for key, multiplier_base in RANDOMISED_PARAMS.items():
            exponent = np.asarray(task.params.get(f"{key}_exp"), dtype=np.float64)
            base_values = getattr(base, key)
            if exponent.shape != base_values.shape:
                raise SuiteError(f"{self.name} task param {key}_exp must have shape "
                                 f"{base_values.shape}, got {exponent.shape}")
            # always from the base values, so switching tasks never accumulates
            getattr(env.model, key)[:] = base_values * multiplier_base ** exponent
        # derived constants (subtree masses, inverse weights) must follow the new masses
        mujoco.mj_setConst(env.model, env.data)

    def observation_parts(self, env):
        return env.data.qpos[1:], np.clip(env.data.qvel, -10.0, 10.0)

    def reward(self, env, action, velocity, position):
        forward_velocity = float(velocity[0])
        alive_bonus = 1.0
        ctrl_cost = 1e-3 * float(action @ action)
        return (forward_velocity + alive_bonus - ctrl_cost, self._unhealthy(env.data),
                {"forward_velocity": forward_velocity, "alive_bonus": alive_bonus,
                 "ctrl_cost": ctrl_cost})

    def reward_batch(self, envs, actions, velocity, position):
        reward = velocity[:, 0] + 1.0 - 1e-3 * _squared_norms(actions)
        return reward, np.array([self._unhealthy(env.data) for env in envs], np.bool_)

    def _unhealthy(self, data: mujoco.MjData) -> bool:
        raise NotImplementedError


class WalkerParams(_RandomParamsSuite):
    name = "walker-params"
    body = WALKER
    base = "Walker2d (gymnasium walker2d_v5.xml, MuJoCo 3)"
    description = _RandomParamsSuite._description(
        "Walker2d", "not (0.8 < height < 2.0 and -1 < angle < 1), height qpos[1], angle qpos[2]")

    def _unhealthy(self, data):
        height, angle = data.qpos[1], data.qpos[2]
        return not (0.8 < height < 2.0 and -1.0 < angle < 1.0)


class HopperParams(_RandomParamsSuite):
    name = "hopper-params"
    body = HOPPER
    base = "Hopper (gymnasium hopper.xml, MuJoCo 3)"
    description = _RandomParamsSuite._description(
        "Hopper", "not (state finite and |state[2:]| < 100 and height > 0.7 and |angle| < 0.2), "
                  "state = (qpos, qvel), height qpos[1], angle qpos[2]")

    def _unhealthy(self, data):
        state = np.concatenate((data.qpos, data.qvel))
        height, angle = data.qpos[1], data.qpos[2]
        healthy = (np.isfinite(state).all() and (np.abs(state[2:]) < 100).all()
                   and height > 0.7 and abs(angle) < 0.2)
        return not healthy


__all__ = ["AntDir", "AntGoal", "Body", "CheetahDir", "CheetahVel", "HopperParams",
           "HumanoidDir", "LocomotionSuite", "MujocoTaskEnv", "WalkerParams"]
