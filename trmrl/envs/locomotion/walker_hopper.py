"""Walker2d and Hopper with random physical parameters (rand_param_envs): walker-params and
hopper-params, where each task rescales the body's masses, inertias, damping and friction."""

from __future__ import annotations

import mujoco
import numpy as np

from trmrl.envs.base import SuiteError, Task
from trmrl.envs.locomotion.mujoco_env import (Body, LocomotionSuite, Rewards, base_model, root_x,
                                               squared_norms)

WALKER = Body("walker2d_v5.xml", frame_skip=4, noise_scale=5e-3, gaussian_qvel_noise=False,
              contact_forces=False, position=root_x)
HOPPER = Body("hopper.xml", frame_skip=4, noise_scale=5e-3, gaussian_qvel_noise=False,
              contact_forces=False, position=root_x)

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
        model = base_model(self.body.xml_file)
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
        base = base_model(self.body.xml_file)
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

    def reward_batch(self, envs, actions, velocity, position):
        forward_velocity = velocity[:, 0]
        alive_bonus = 1.0
        ctrl_cost = 1e-3 * squared_norms(actions)
        return Rewards(forward_velocity + alive_bonus - ctrl_cost,
                       np.array([self._unhealthy(env.data) for env in envs], np.bool_),
                       {"forward_velocity": forward_velocity, "alive_bonus": alive_bonus,
                        "ctrl_cost": ctrl_cost})

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
