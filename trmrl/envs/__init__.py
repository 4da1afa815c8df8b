"""Meta-RL task suites by name: ``make_suite("cheetah-vel")``.

Suites are imported lazily so that listing names never imports Meta-World.
"""

from __future__ import annotations

import importlib

from trmrl.envs.base import NUM_EVAL_TASKS, SPLITS, SuiteError, Task, TaskEnv, TaskSuite

# name -> (module, class); the order is the order of DESIGN.md and every listing
_REGISTRY: dict[str, tuple[str, str]] = {
    "cheetah-vel": ("trmrl.envs.locomotion.cheetah", "CheetahVel"),
    "cheetah-dir": ("trmrl.envs.locomotion.cheetah", "CheetahDir"),
    "ant-dir": ("trmrl.envs.locomotion.ant", "AntDir"),
    "ant-goal": ("trmrl.envs.locomotion.ant", "AntGoal"),
    "humanoid-dir": ("trmrl.envs.locomotion.humanoid", "HumanoidDir"),
    "walker-params": ("trmrl.envs.locomotion.walker_hopper", "WalkerParams"),
    "hopper-params": ("trmrl.envs.locomotion.walker_hopper", "HopperParams"),
    "ml1-reach": ("trmrl.envs.metaworld_suites", "ML1Reach"),
    "ml1-push": ("trmrl.envs.metaworld_suites", "ML1Push"),
    "ml1-pick-place": ("trmrl.envs.metaworld_suites", "ML1PickPlace"),
    "ml10": ("trmrl.envs.metaworld_suites", "ML10"),
    "ml45": ("trmrl.envs.metaworld_suites", "ML45"),
}
ENV_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def check_env_name(name: str) -> str:
    if name not in _REGISTRY:
        raise SuiteError(f"unknown env {name!r}; valid envs: {', '.join(ENV_NAMES)}")
    return name


def suite_class(name: str) -> type[TaskSuite]:
    module, cls = _REGISTRY[check_env_name(name)]
    return getattr(importlib.import_module(module), cls)


def make_suite(name: str) -> TaskSuite:
    """The suite called ``name`` (see ``ENV_NAMES``)."""
    return suite_class(name)()


__all__ = ["ENV_NAMES", "NUM_EVAL_TASKS", "SPLITS", "SuiteError", "Task", "TaskEnv",
           "TaskSuite", "check_env_name", "make_suite", "suite_class"]
