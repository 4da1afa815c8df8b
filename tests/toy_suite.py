"""A tiny, exactly predictable suite for testing trial bookkeeping and learning.

obs = [steps taken in this episode, last action], reward = -(a - target)^2 with the task's
target in [-1, 1]. The episode terminates when `fall_at` steps were taken (0 = never), so
tests can place terminations exactly. Success = the action within 0.1 of the target.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from trmrl.envs.base import Task, TaskEnv, TaskSuite, split_rng


class ToyEnv(TaskEnv):
    steps_taken = 0  # by every ToyEnv of this process: what an agent consumed, whatever its sampler

    def __init__(self, fall_at: int = 0):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.fall_at = fall_at
        self.steps = None

    def set_task(self, task: Task) -> None:
        self.task = task

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        noise = self.np_random.uniform(-0.01, 0.01)  # seeded: tests check reset seeding
        return np.array([0.0, noise]), {}

    def step(self, action):
        if self.steps is None or self.task is None:
            raise RuntimeError("reset() with a task first")
        a = float(np.clip(action, -1, 1)[0])
        self.steps += 1
        ToyEnv.steps_taken += 1
        target = self.task.params["target"]
        reward = -(a - target) ** 2
        terminated = self.fall_at > 0 and self.steps >= self.fall_at
        return (np.array([float(self.steps), a]), reward, terminated, False,
                {"success": abs(a - target) < 0.1})


class ToySuite(TaskSuite):
    name = "toy"
    base = "toy"
    horizon = 5
    episodes_per_trial = 3
    splits = ("train", "test")
    has_success = True
    task_param = "target action"
    description = {"task": "reach a target action", "reward": "-(a - target)^2",
                   "train": "sampled U[-1,1]", "test": "20 fixed", "done": "fall_at steps"}

    def __init__(self, fall_at: int = 0):
        self.fall_at = fall_at

    def _task(self, split, index, target):
        return Task(self.name, split, index, {"target": float(target)}, f"target={target:+.2f}",
                    float(target))

    def tasks(self, split, seed, n=None):
        self.check_split(split)
        if split == "train":
            return self.sample_tasks(split_rng(seed, "train"), n or 20, seed)
        rng = split_rng(seed, split)
        return [self._task(split, i, t) for i, t in enumerate(rng.uniform(-1, 1, n or 20))]

    def sample_tasks(self, rng, n, seed=0):
        return [self._task("train", i, t) for i, t in enumerate(rng.uniform(-1, 1, n))]

    def make_env(self, task=None):
        env = ToyEnv(self.fall_at)
        if task is not None:
            env.set_task(task)
        return env
