"""Trial bookkeeping of the sampler, on the exactly predictable toy suite."""

import numpy as np
import pytest

from toy_suite import ToySuite
from trmrl.envs import SuiteError
from trmrl.sampling import PolicyOutput, RandomPolicy, TrialSampler


class ScriptedPolicy:
    """Acts `act_fn(step)`; records every reset and input so tests can inspect them."""

    def __init__(self, act_fn):
        self.act_fn = act_fn
        self.resets, self.inputs = [], []

    def reset(self, num_trials):
        self.resets.append(num_trials)

    def act(self, step, deterministic=False):
        self.inputs.append(step)
        action = self.act_fn(step)
        return PolicyOutput(action, {"tag": np.full(len(action), 7.0, np.float32)})


def counting_policy():
    """Action depends on the step in the episode, so prev_action is checkable."""
    return ScriptedPolicy(lambda s: (s.obs[:, :1] / 10.0).astype(np.float32))


def test_trial_layout_without_termination():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=4, seed=0) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 4))
    H, K = suite.horizon, suite.episodes_per_trial
    assert batch.obs.shape == (4, K * H, 2) and batch.action.shape == (4, K * H, 1)
    assert batch.valid.all() and batch.env_steps == 4 * K * H
    starts = np.zeros(K * H, bool)
    starts[::H] = True
    assert (batch.episode_start == starts).all()
    assert (batch.truncated == np.roll(starts, -1)).all() and not batch.terminated.any()
    assert (batch.episode_index == np.repeat(np.arange(K), H)).all()
    # trial start: zero previous action/reward; episode boundary: the last step's values
    assert (batch.prev_action[:, 0] == 0).all() and (batch.prev_reward[:, 0] == 0).all()
    np.testing.assert_array_equal(batch.prev_action[:, H], batch.action[:, H - 1])
    np.testing.assert_array_equal(batch.prev_reward[:, 1:], batch.reward[:, :-1])
    # next_obs of the last step of an episode is that episode's final obs, not the reset obs
    assert (batch.next_obs[:, H - 1, 0] == H).all() and (batch.obs[:, H, 0] == 0).all()
    np.testing.assert_allclose(batch.episode_return, batch.reward.reshape(4, K, H).sum(-1))
    assert (batch.episode_length == H).all()
    assert (batch.extras["tag"] == 7).all()
    assert batch.trial_end[:, -1].all() and batch.trial_end.sum() == 4
    aug = batch.augmented_inputs()
    assert aug.shape == (4, K * H, 2 + 1 + 1 + 1) and (aug[:, ::H, -1] == 1).all()


def test_termination_pads_and_resets():
    suite = ToySuite(fall_at=3)  # every episode ends after 3 of its 5 steps
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 2))
    K, H = suite.episodes_per_trial, suite.horizon
    assert batch.valid.sum(1).tolist() == [3 * K] * 2
    assert not batch.valid[:, 3 * K:].any()
    assert batch.terminated[:, [2, 5, 8]].all() and batch.terminated.sum() == 2 * K
    assert not batch.truncated.any()
    assert batch.episode_start[:, [0, 3, 6]].all() and batch.episode_start.sum() == 2 * K
    assert (batch.episode_length == 3).all()
    assert (batch.episode_index[:, :9] == np.repeat(np.arange(K), 3)).all()
    assert batch.trial_end[:, 8].all()


def test_horizon_and_episodes_override():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=1, horizon=2, episodes_per_trial=4) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 1))
    assert batch.obs.shape[1] == 8 and batch.episode_start[0, ::2].all()


def test_success_is_any_step_of_the_episode():
    suite = ToySuite()
    tasks = [suite._task("test", 0, 0.5), suite._task("test", 1, -0.9)]
    # hits 0.5 only on the third step of each episode
    policy = ScriptedPolicy(lambda s: np.where(s.obs[:, :1] == 2, 0.5, -0.2).astype(np.float32))
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(policy, tasks)
    assert batch.success[0].sum() == suite.episodes_per_trial
    assert (batch.episode_success[0] == 1).all() and (batch.episode_success[1] == 0).all()


def test_more_tasks_than_slots_run_in_rounds_with_memory_reset():
    suite = ToySuite()
    policy = counting_policy()
    with TrialSampler(suite, num_envs=3) as sampler:
        batch = sampler.run(policy, suite.tasks("test", 0, 7))
    assert policy.resets == [3, 3, 1]
    assert batch.num_trials == 7 and [t.index for t in batch.tasks] == list(range(7))


def test_inactive_trials_are_flagged_to_the_policy():
    suite = ToySuite(fall_at=2)
    policy = counting_policy()
    with TrialSampler(suite, num_envs=2, horizon=5) as sampler:
        sampler.run(policy, suite.tasks("test", 0, 2))
    assert all(step.active.all() for step in policy.inputs)  # both fall at the same time
    assert len(policy.inputs) == 2 * suite.episodes_per_trial


def _random_batch(seed, workers=0, call_twice=False):
    suite = ToySuite()
    with TrialSampler(suite, num_envs=4, num_workers=workers, seed=seed) as sampler:
        if call_twice:
            sampler.run(RandomPolicy([-1], [1], seed=1), suite.tasks("test", 0, 4))
        return sampler.run(RandomPolicy([-1], [1], seed=1), suite.tasks("test", 0, 4))


def test_same_seed_same_trials_different_seed_different_resets():
    a, b, c = _random_batch(0), _random_batch(0), _random_batch(1)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.reward, b.reward)
    assert not np.array_equal(a.obs[:, :, 1], c.obs[:, :, 1])  # reset noise differs
    d = _random_batch(0, call_twice=True)  # a later call gets fresh reset seeds
    assert not np.array_equal(a.obs[:, 0, 1], d.obs[:, 0, 1])


def test_worker_processes_give_identical_trials():
    a, b = _random_batch(3, workers=0), _random_batch(3, workers=2)
    for name in ("obs", "reward", "next_obs", "episode_start", "valid", "success"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("kwargs, word", [({"horizon": 0}, "horizon"),
                                          ({"episodes_per_trial": -1}, "episodes_per_trial"),
                                          ({"num_envs": 0}, "num_envs"),
                                          ({"num_workers": 9}, "num_workers")])
def test_bad_sampler_settings(kwargs, word):
    args = {"num_envs": 2, **kwargs}
    with pytest.raises(SuiteError, match=word):
        TrialSampler(ToySuite(), **args)


def test_task_of_another_env_is_rejected():
    suite = ToySuite()
    other = suite.tasks("test", 0, 1)[0].__class__("cheetah-vel", "test", 0, {})
    with TrialSampler(suite, num_envs=1) as sampler, pytest.raises(SuiteError, match="cheetah-vel"):
        sampler.run(counting_policy(), [other])


@pytest.mark.parametrize("env_name", [
    "cheetah-vel", "cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir", "walker-params",
    "hopper-params", "ml1-reach", "ml1-push", "ml1-pick-place", "ml10",
    pytest.param("ml45", marks=pytest.mark.slow)])
def test_every_suite_runs_one_full_trial(env_name):
    from trmrl.envs import make_suite
    suite = make_suite(env_name)
    _, act_space = suite.spaces()
    with TrialSampler(suite, num_envs=1, seed=0) as sampler:
        batch = sampler.run(RandomPolicy(act_space.low, act_space.high), suite.eval_tasks("test", 0, 1))
    K, H = suite.episodes_per_trial, suite.horizon
    assert batch.obs.shape == (1, K * H, suite.observation_dim)
    assert (batch.episode_length > 0).all() and (batch.episode_length <= H).all()
    assert batch.episode_start.sum() == K and np.isfinite(batch.reward[batch.valid]).all()
    if suite.has_success:
        assert set(np.unique(batch.episode_success)) <= {0.0, 1.0}
    else:
        assert np.isnan(batch.episode_success).all()
