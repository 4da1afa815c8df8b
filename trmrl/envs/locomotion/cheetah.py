"""HalfCheetah suites: cheetah-vel (a target velocity) and cheetah-dir (forward or backward)."""

from __future__ import annotations

import numpy as np

from trmrl.envs.base import Task
from trmrl.envs.locomotion.mujoco_env import (Body, LocomotionSuite, Rewards,
                                               alternating_directions, no_termination,
                                               random_directions, root_x, squared_norms,
                                               task_params)

HALF_CHEETAH = Body("half_cheetah.xml", frame_skip=5, noise_scale=0.1, gaussian_qvel_noise=True,
                    contact_forces=False, position=root_x)


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

    def reward_batch(self, envs, actions, velocity, position):
        forward_velocity = velocity[:, 0]
        velocity_cost = np.abs(forward_velocity - task_params(envs, "velocity"))
        ctrl_cost = 0.05 * squared_norms(actions)
        return Rewards(-velocity_cost - ctrl_cost, no_termination(len(envs)),
                       {"forward_velocity": forward_velocity, "velocity_cost": velocity_cost,
                        "ctrl_cost": ctrl_cost})


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
        return [self._task(split, i, d) for i, d in enumerate(random_directions(rng, n))]

    def _fixed_tasks(self, split, rng):
        return alternating_directions(split, self._task)

    def reward_batch(self, envs, actions, velocity, position):
        forward_velocity = velocity[:, 0]
        forward_reward = task_params(envs, "direction") * forward_velocity
        ctrl_cost = 0.05 * squared_norms(actions)
        return Rewards(forward_reward - ctrl_cost, no_termination(len(envs)),
                       {"forward_velocity": forward_velocity, "forward_reward": forward_reward,
                        "ctrl_cost": ctrl_cost})
