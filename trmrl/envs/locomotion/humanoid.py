"""Humanoid suite: humanoid-dir (a direction to run in, measured on the mass centre)."""

from __future__ import annotations

import mujoco
import numpy as np

from trmrl.envs.base import Task
from trmrl.envs.locomotion.mujoco_env import (Body, LocomotionSuite, Rewards, direction_vectors,
                                               squared_norms)


def _mass_centre_xy(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    # as gymnasium's humanoid mass_center(): mass-weighted mean of the bodies' centres of mass
    return (model.body_mass @ data.xipos / model.body_mass.sum())[:2]


HUMANOID = Body("humanoid.xml", frame_skip=5, noise_scale=1e-2, gaussian_qvel_noise=False,
                contact_forces=True, position=_mass_centre_xy)


def _contact_cost(data: mujoco.MjData) -> float:
    return min(0.5e-6 * float(np.sum(np.square(data.cfrc_ext))), 10.0)


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

    def reward_batch(self, envs, actions, velocity, position):
        direction = direction_vectors(envs)
        forward_velocity = velocity[:, 0] * direction[:, 0] + velocity[:, 1] * direction[:, 1]
        forward_reward = 1.25 * forward_velocity
        alive_bonus = 5.0
        ctrl_cost = 0.1 * squared_norms(actions)
        contact_cost = np.array([_contact_cost(env.data) for env in envs])
        height = np.array([env.data.qpos[2] for env in envs])
        return Rewards(forward_reward + alive_bonus - ctrl_cost - contact_cost,
                       ~((1.0 < height) & (height < 2.0)),
                       {"forward_velocity": forward_velocity, "forward_reward": forward_reward,
                        "alive_bonus": alive_bonus, "ctrl_cost": ctrl_cost,
                        "contact_cost": contact_cost})
