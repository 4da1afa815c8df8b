"""TaskSuite.step_batch, the sampler's step: the per-env step (bit for bit but for the rewards'
last bit), errors named by env."""

import functools

import numpy as np
import pytest

from toy_suite import ToySuite
from trmrl.env_slots import EnvSlots, SlotArrays, SlotTrial
from trmrl.envs import Task, TaskSuite, make_suite
from trmrl.envs.base import EnvStepError
from trmrl.sampling import RandomPolicy, SamplerError, TrialSampler

LOCOMOTION = ("cheetah-vel", "cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir",
              "walker-params", "hopper-params")
TERMINATING = ("ant-dir", "humanoid-dir", "walker-params", "hopper-params")
NUM_ENVS, NUM_STEPS = 6, 60


def ready_envs(suite, tasks):
    envs = [suite.make_env(task) for task in tasks]
    for i, env in enumerate(envs):
        env.reset(seed=i)
    return envs


def step_one_by_one(envs, actions):
    obs, reward, terminated, _, _ = zip(*(env.step(a) for env, a in zip(envs, actions)))
    return np.stack(obs), np.array(reward), np.array(terminated)


def assert_same_step(expected, got):
    """Observations and terminations bit for bit (each env runs the same mj_step on the same
    state either way); rewards to float64 rounding: a batch of n and n batches of one run
    numpy's SIMD kernels over different lengths, and an AVX-512 exp/sum rounds a vector's tail
    and body differently. The physics never sees the reward, so such a bit cannot compound."""
    (want_obs, want_reward, want_terminated), (obs, reward, terminated) = expected, got
    np.testing.assert_array_equal(obs, want_obs)
    np.testing.assert_allclose(reward, want_reward, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(terminated, want_terminated)


@pytest.mark.parametrize("how", ["LocomotionSuite", "TaskSuite default"])
@pytest.mark.parametrize("name", LOCOMOTION)
def test_step_batch_equals_per_env_steps(name, how):
    # LocomotionSuite: env.step is a batch of one, so a row of a batch must not depend on the
    # other rows (their tasks, actions, terminations) nor on the batch size; the rewards
    # themselves are checked against their formulas in test_envs_locomotion.py.
    # TaskSuite default (Meta-World's, a new suite's): it must assemble env.step's results.
    suite = make_suite(name)
    step_batch = suite.step_batch if how == "LocomotionSuite" else functools.partial(
        TaskSuite.step_batch, suite)
    tasks = suite.tasks("test", 0, NUM_ENVS // 2) + suite.tasks("train", 0, NUM_ENVS // 2)
    reference, batched = ready_envs(suite, tasks), ready_envs(suite, tasks)
    high = reference[0].model.actuator_ctrlrange[:, 1]
    rng = np.random.default_rng(0)
    resets = 0
    for _ in range(NUM_STEPS):
        # float32 as the sampler's actions, half again the control range so that clipping acts
        actions = rng.uniform(-1.5 * high, 1.5 * high, (NUM_ENVS, high.size)).astype(np.float32)
        expected = step_one_by_one(reference, actions)
        obs, reward, terminated, success = step_batch(batched, actions)
        assert obs.dtype == np.float64 and reward.dtype == np.float64
        assert terminated.dtype == np.bool_ and success is None
        assert_same_step(expected, (obs, reward, terminated))
        for i in np.flatnonzero(terminated):
            np.testing.assert_array_equal(batched[i].reset(seed=100 + resets)[0],
                                          reference[i].reset(seed=100 + resets)[0])
            resets += 1
    assert resets > 0 or name not in TERMINATING


@pytest.mark.parametrize("name", LOCOMOTION)
def test_cached_views_follow_the_env_across_tasks_and_resets(name):
    suite = make_suite(name)
    tasks = suite.tasks("train", 0, 4)
    reference, batched = ready_envs(suite, tasks[:2]), ready_envs(suite, tasks[:2])
    # observations built from MuJoCo's arrays only are cached as views; a computed part
    # (walker and hopper clip qvel) is not, and is then computed every step
    assert (batched[0].observation_views is None) == (name in ("walker-params", "hopper-params"))
    rng = np.random.default_rng(1)
    high = reference[0].model.actuator_ctrlrange[:, 1]
    for round_ in range(3):
        for _ in range(5):
            actions = rng.uniform(-high, high, (2, high.size))
            expected = step_one_by_one(reference, actions)
            assert_same_step(expected, suite.step_batch(batched, actions)[:3])
        for envs in (reference, batched):
            for env, task in zip(envs, tasks[2:] if round_ % 2 == 0 else tasks[:2]):
                env.set_task(task)
                env.reset(seed=round_)


def test_step_batch_names_the_env_that_cannot_step():
    suite = make_suite("cheetah-vel")
    envs = ready_envs(suite, suite.tasks("test", 0, 3))
    envs[1].set_task(suite.tasks("test", 0)[5])  # needs a reset now
    envs[2] = suite.make_env()  # no task
    actions = np.zeros((3, suite.action_dim))
    with pytest.raises(EnvStepError) as caught:
        suite.step_batch(envs, actions)
    assert caught.value.index == 1
    assert isinstance(caught.value.__cause__, RuntimeError)
    assert "call reset() before step()" in str(caught.value.__cause__)
    with pytest.raises(EnvStepError) as caught:
        suite.step_batch(envs[2:], actions[2:])
    assert caught.value.index == 0 and "call set_task(task)" in str(caught.value.__cause__)


@pytest.mark.parametrize("shape", [(3, 5), (2, 6), (3, 6, 1)])
def test_step_batch_rejects_actions_of_the_wrong_shape(shape):
    suite = make_suite("cheetah-vel")
    envs = ready_envs(suite, suite.tasks("test", 0, 3))
    with pytest.raises(ValueError, match=rf"actions must have shape \(3, 6\).*got \({shape[0]}, "):
        suite.step_batch(envs, np.zeros(shape))


def test_sampler_names_the_slots_when_the_batch_code_fails():
    # a task without its parameter fails in the vectorised reward, which has no env index
    suite = make_suite("cheetah-vel")
    _, action_space = suite.spaces()
    broken = Task("cheetah-vel", "test", 7, {}, "no velocity")
    with TrialSampler(suite, num_envs=2) as sampler, \
            pytest.raises(SamplerError, match=r"env slots 0-1 failed in step: KeyError: 'velocity'"):
        sampler.run(RandomPolicy(action_space.low, action_space.high),
                    suite.tasks("test", 0, 1) + [broken])


def test_sampler_names_the_slot_of_a_failing_env_among_idle_slots():
    suite = ToySuite()
    slots = EnvSlots(suite, SlotArrays(3, 2, 1), 0, 3, horizon=5, episodes_per_trial=1)
    broken = Task("toy", "test", 9, {}, "no target")  # ToyEnv.step raises KeyError('target')
    tasks = suite.tasks("test", 0, 2) + [broken]
    slots.start_round([SlotTrial(task, seed=0, trial=i) for i, task in enumerate(tasks)], call=0)
    slots.active[0] = False  # slot 0's trial is over: slot 2 is env 1 of the batch
    with pytest.raises(SamplerError, match=r"env slot 2 \(task 9 .*failed in step: KeyError"):
        slots.step()
