"""Ant suites: ant-dir (a direction to run in) and ant-goal (a position to walk to)."""

from __future__ import annotations

import math

import mujoco
import numpy as np

from trmrl.envs.base import Task
from trmrl.envs.locomotion.mujoco_env import (Body, LocomotionSuite, Rewards,
                                               alternating_directions, direction_vectors,
                                               no_termination, random_directions, root_xy,
                                               squared_norms, task_params)

ANT = Body("ant.xml", frame_skip=5, noise_scale=0.1, gaussian_qvel_noise=True,
           contact_forces=True, position=root_xy)


def _contact_cost(data: mujoco.MjData) -> float:
    return 0.5e-3 * float(np.sum(np.square(np.clip(data.cfrc_ext, -1.0, 1.0))))


def _contact_costs(envs) -> np.ndarray:
    return np.array([_contact_cost(env.data) for env in envs])


def _unhealthy(data: mujoco.MjData) -> bool:
    state_finite = np.isfinite(data.qpos).all() and np.isfinite(data.qvel).all()
    return not (state_finite and 0.2 <= data.qpos[2] <= 1.0)


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
        angles = rng.uniform(0.0, 2 * np.pi, n) if split == "ood" else random_directions(rng, n)
        return [self._task(split, i, g) for i, g in enumerate(angles)]

    def _fixed_tasks(self, split, rng):
        if split == "test":
            return alternating_directions(split, self._task)
        return super()._fixed_tasks(split, rng)

    def task_features(self, task: Task) -> np.ndarray:
        angle = task.params["angle"]
        return np.array([np.cos(angle), np.sin(angle)], np.float32)

    def observation_parts(self, env):
        return env.data.qpos[2:], env.data.qvel

    def reward_batch(self, envs, actions, velocity, position):
        direction = direction_vectors(envs)
        forward_velocity = velocity[:, 0] * direction[:, 0] + velocity[:, 1] * direction[:, 1]
        ctrl_cost = 0.5 * squared_norms(actions)
        contact_cost = _contact_costs(envs)
        survive_reward = 1.0
        return Rewards(forward_velocity - ctrl_cost - contact_cost + survive_reward,
                       np.array([_unhealthy(env.data) for env in envs], np.bool_),
                       {"forward_velocity": forward_velocity, "ctrl_cost": ctrl_cost,
                        "contact_cost": contact_cost, "survive_reward": survive_reward})


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

    def reward_batch(self, envs, actions, velocity, position):
        goal = task_params(envs, "goal")
        goal_distance = np.abs(position[:, 0] - goal[:, 0]) + np.abs(position[:, 1] - goal[:, 1])
        ctrl_cost = 0.1 * squared_norms(actions)
        contact_cost = _contact_costs(envs)
        return Rewards(-goal_distance - ctrl_cost - contact_cost, no_termination(len(envs)),
                       {"goal_distance": goal_distance, "ctrl_cost": ctrl_cost,
                        "contact_cost": contact_cost})
