"""MuJoCo locomotion suites of the meta-RL literature (VariBAD, PEARL, TrMRL).

cheetah-vel, cheetah-dir (:mod:`.cheetah`), ant-dir, ant-goal (:mod:`.ant`), humanoid-dir
(:mod:`.humanoid`), walker-params, hopper-params (:mod:`.walker_hopper`); the env and the suite
base they share are in :mod:`.mujoco_env`.

The bodies are gymnasium's MuJoCo XML models, driven directly through the ``mujoco`` bindings
(no gymnasium ``MujocoEnv``). Conventions shared by every suite:

* Actions are clipped to the actuators' ``ctrlrange`` (the action space) before they reach
  the physics *and* before the control cost.
* Stepping and rewards are written once, over a batch of envs
  (:meth:`LocomotionSuite.step_with_rewards`, :meth:`LocomotionSuite.reward_batch`): the trial
  sampler steps its envs through ``step_batch``, and ``env.step`` is a batch of one.
* ``step`` returns ``truncated=False`` always: the trial sampler enforces the horizon.
* ``info`` holds the reward components (``forward_velocity``, ``ctrl_cost``, ...) and
  ``task_value`` (the task's :attr:`Task.value`).
* Velocities are displacements over one env step divided by ``dt = timestep * frame_skip``.
* ``reset`` must follow ``set_task`` (``step`` raises otherwise): the *-params suites rebuild
  model constants with ``mj_setConst``, which overwrites the simulation state.
"""

from trmrl.envs.locomotion.ant import ANT, AntDir, AntGoal
from trmrl.envs.locomotion.cheetah import HALF_CHEETAH, CheetahDir, CheetahVel
from trmrl.envs.locomotion.humanoid import HUMANOID, HumanoidDir
from trmrl.envs.locomotion.mujoco_env import Body, LocomotionSuite, MujocoTaskEnv, Rewards
from trmrl.envs.locomotion.walker_hopper import HOPPER, WALKER, HopperParams, WalkerParams

__all__ = ["ANT", "AntDir", "AntGoal", "Body", "CheetahDir", "CheetahVel", "HALF_CHEETAH",
           "HOPPER", "HUMANOID", "HopperParams", "HumanoidDir", "LocomotionSuite",
           "MujocoTaskEnv", "Rewards", "WALKER", "WalkerParams"]
