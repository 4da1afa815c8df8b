"""RL2-PPO: the GRU state across a trial, acting vs. learning, trial minibatches, padding,
resume and a tiny learning run (the interface contract is in test_agent_contract.py)."""

import copy

import numpy as np
import pytest
import torch

from baselines.rl2 import RL2Agent, RL2Config
from baselines.rl2.rl2 import unroll_side_by_side
from test_agent_contract import step_input
from test_train import sigkill_after_progress, train_args
from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.cli import main
from trmrl.nn import make_gru
from trmrl.ppo import gaussian_log_prob
from trmrl.sampling import TrialSampler
from trmrl.settings import AcceleratedSettings
from trmrl.train import resolve

TINY = dict(gru_size=8, trials_per_update=4, minibatch_size=2, epochs=2)


def tiny_rl2(suite=None, seed=0, **overrides):
    config = cfg.build(RL2Config, {**TINY, **overrides})
    return RL2Agent(config, suite or ToySuite(fall_at=4), torch.device("cpu"), seed)


def act_sequence(agent, steps):
    """Deterministic actions (= means) and values for a list of StepInputs, from one reset."""
    agent.reset(len(steps[0].obs))
    outputs = [agent.act(step, deterministic=True) for step in steps]
    return (np.stack([o.action for o in outputs], 1), np.stack([o.extras["value"] for o in outputs], 1))


def random_steps(suite, n, length, seed=0, episode_length=4):
    rng = np.random.default_rng(seed)
    return [step_input(suite, n, rng, episode_start=t % episode_length == 0) for t in range(length)]


# -- the GRU state ------------------------------------------------------------------------------
def test_side_by_side_unroll_equals_two_gru_calls():
    torch.manual_seed(0)
    first, second = make_gru(7, 5).double(), make_gru(7, 5).double()
    for param in [*first.parameters(), *second.parameters()]:  # make_gru zeroes the biases
        torch.nn.init.normal_(param)
    x = torch.randn(3, 11, 7, dtype=torch.float64)
    ours = unroll_side_by_side(first, second, x)
    reference = (first(x)[0], second(x)[0])
    torch.testing.assert_close(ours, reference)
    params = [*first.parameters(), *second.parameters()]
    grads = torch.autograd.grad(ours[0].sin().sum() + ours[1].square().sum(), params)
    reference_grads = torch.autograd.grad(reference[0].sin().sum() + reference[1].square().sum(), params)
    torch.testing.assert_close(grads, reference_grads)



@pytest.mark.parametrize("shared_gru, hidden", [(False, ()), (True, (8,))])
def test_acting_step_by_step_equals_the_batch_unroll(shared_gru, hidden):
    agent = tiny_rl2(shared_gru=shared_gru, hidden=hidden)
    steps = random_steps(agent.suite, 3, 10)
    mean, value = act_sequence(agent, steps)
    x = torch.from_numpy(np.stack([s.augmented() for s in steps], 1))  # [3, 10, D]
    with torch.no_grad():
        batch_mean, batch_value, *_ = agent.model({"x": x})
    torch.testing.assert_close(torch.from_numpy(mean), batch_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(torch.from_numpy(value), batch_value, atol=1e-6, rtol=0)


def test_state_is_carried_across_episodes_of_a_trial():
    agent = tiny_rl2()
    steps = random_steps(agent.suite, 2, 9, episode_length=4)  # episodes start at 0, 4, 8
    for step in steps:  # both trials see the same inputs ...
        for field in ("obs", "prev_action", "prev_reward"):
            getattr(step, field)[1] = getattr(step, field)[0]
    steps[1].prev_reward[1] += 1.0  # ... except one reward early in the first episode
    mean, value = act_sequence(agent, steps)
    # two rows of one batch with equal inputs: a vectorised kernel (AVX-512) may round the
    # rows differently, so they agree to float32 rounding, not bit for bit
    np.testing.assert_allclose(mean[0, 0], mean[1, 0], rtol=1e-6, atol=1e-7)
    assert not np.allclose(mean[0, 1], mean[1, 1])
    for t in (4, 8):  # the first steps of later episodes still remember it
        assert not np.allclose(mean[0, t], mean[1, t], atol=1e-7)
        assert not np.allclose(value[0, t], value[1, t], atol=1e-7)


def test_reset_makes_a_trial_independent_of_the_previous_one():
    agent = tiny_rl2()
    trial_a, trial_b = random_steps(agent.suite, 3, 8, seed=1), random_steps(agent.suite, 3, 8, seed=2)
    alone = act_sequence(agent, trial_b)
    act_sequence(agent, trial_a)  # another trial first ...
    after = act_sequence(agent, trial_b)  # ... then a reset (inside act_sequence)
    for a, b in zip(alone, after):
        np.testing.assert_array_equal(a, b)
    fresh = tiny_rl2()  # the same weights, never used
    for a, b in zip(alone, act_sequence(fresh, trial_b)):
        np.testing.assert_array_equal(a, b)


def test_latent_memories_are_the_policy_gru_state():
    agent = tiny_rl2()
    agent.record_memory = True
    with TrialSampler(agent.suite, num_envs=3) as sampler:
        batch = sampler.run(agent, agent.suite.tasks("test", 0, 3), deterministic=True)
    with torch.no_grad():
        states, _ = agent.model.policy_gru(torch.from_numpy(batch.augmented_inputs()))
    valid = batch.valid
    assert batch.extras["memory"].shape == (*valid.shape, 8)
    np.testing.assert_allclose(batch.extras["memory"][valid], states.numpy()[valid], atol=1e-6)


# -- PPO over whole trials ------------------------------------------------------------------------
def record_evaluate(agent):
    """Wrap agent.evaluate: every minibatch it sees and its log-ratio (masked to valid steps)."""
    calls, evaluate = [], agent.evaluate

    def recording(minibatch):
        log_prob, entropy, value = evaluate(minibatch)
        valid = minibatch["weight"] > 0
        calls.append({"x": minibatch["input_x"].shape, "weight": minibatch["weight"].clone(),
                      "log_ratio": (log_prob - minibatch["logp"]).detach()[valid],
                      "value": value.detach()[valid]})
        return log_prob, entropy, value

    agent.evaluate = recording
    return calls


def test_ppo_ratio_is_exactly_one_before_the_first_update():
    agent = tiny_rl2(trials_per_update=5, minibatch_size=2, epochs=3)
    with TrialSampler(agent.suite, num_envs=5) as sampler:
        batch = sampler.run(agent, agent.suite.tasks("train", 0, 5))
    calls = record_evaluate(agent)
    agent.update(copy.deepcopy(batch))
    first = calls[0]
    assert first["log_ratio"].numel() > 0
    assert first["log_ratio"].abs().max().item() < 1e-6  # the same function, the same inputs
    # minibatches are whole trials: 5 trials in 2 + 2 + 1, each unrolled over all T steps
    T = batch.valid.shape[1]
    assert [c["x"][:2] for c in calls] == [(2, T), (2, T), (1, T)] * 3
    assert all(c["x"][2] == agent.suite.observation_dim + agent.suite.action_dim + 2 for c in calls)


def test_padding_never_reaches_the_update():
    """Garbage after each trial's end (valid False) leaves the update bit-for-bit unchanged."""
    agent = tiny_rl2(trials_per_update=3)
    with TrialSampler(agent.suite, num_envs=3) as sampler:
        batch = sampler.run(agent, agent.suite.tasks("train", 0, 3))
    assert not batch.valid.all()  # fall_at=4: 12 valid steps of 15
    garbage = copy.deepcopy(batch)
    pad = ~garbage.valid
    for array in (garbage.obs, garbage.prev_action, garbage.action, garbage.reward,
                  garbage.prev_reward, garbage.extras["logp"], garbage.extras["value"]):
        array[pad] = 1e30
    twin = copy.deepcopy(agent)
    stats = agent.update(batch)
    stats_garbage = twin.update(garbage)
    assert stats == stats_garbage
    for a, b in zip(agent.model.parameters(), twin.model.parameters()):
        assert torch.equal(a, b)


def test_separate_value_gru_gets_no_policy_gradient():
    agent = tiny_rl2()
    with TrialSampler(agent.suite, num_envs=4) as sampler:
        batch = sampler.run(agent, agent.suite.tasks("train", 0, 4))
    x = agent.batch_inputs(batch)["x"]
    mean, value, *_ = agent.model({"x": x})
    gaussian_log_prob(mean, agent.model.log_std.expand_as(mean),
                      torch.from_numpy(batch.action)).sum().backward()
    # the two GRUs unroll side by side as one: the value GRU's share is exactly zero
    assert all(p.grad is None or not p.grad.any() for p in agent.model.value_gru.parameters())
    assert all(p.grad is not None and p.grad.any() for p in agent.model.policy_gru.parameters())


def test_normalized_observations_keep_acting_and_learning_in_step():
    agent = tiny_rl2(normalize_observations=True, trials_per_update=3)
    with TrialSampler(agent.suite, num_envs=3) as sampler:
        for i in range(2):  # the second iteration acts with statistics from the first
            batch = sampler.run(agent, agent.suite.tasks("train", i, 3))
            calls = record_evaluate(agent)
            agent.update(batch)
            del agent.evaluate
            assert calls[0]["log_ratio"].abs().max().item() < 1e-6
    assert agent.model.normalizer.count.item() == 2 * batch.valid.sum()


def test_config_rejects_bad_values():
    with pytest.raises(cfg.ConfigError, match="gru_size must be positive"):
        cfg.build(RL2Config, {"gru_size": 0})
    with pytest.raises(cfg.ConfigError, match="unknown .* key 'gru'"):
        cfg.build(RL2Config, {"gru": 8})
    defaults = resolve("rl2", "cheetah-vel", 0, device="cpu").hyperparameters
    assert (defaults.gru_size, defaults.gamma, defaults.gae_lambda, defaults.clip,
            defaults.epochs) == (64, 0.99, 0.95, 0.2, 10)
    assert resolve("rl2", "ml1-push", 0, device="cpu").hyperparameters.gru_size == 256


# -- learning ---------------------------------------------------------------------------------
def test_tiny_training_run_improves_and_adapts_across_episodes():
    """Random targets per trial on the toy suite: the return rises from the initial one, and
    later episodes of a trial beat the first (the reward told the GRU where the target is)."""
    suite = ToySuite()
    agent = tiny_rl2(suite, seed=1, gru_size=16, trials_per_update=8, minibatch_size=4,
                     epochs=4, lr_policy=3e-3, lr_value=3e-3, gamma=0.5)
    rng = np.random.default_rng(0)
    returns = []  # [iterations, episodes]: mean over the trials
    with TrialSampler(suite, num_envs=8, seed=1) as sampler:
        for _ in range(40):
            tasks = suite.sample_tasks(rng, 8)
            returns.append(agent.train_iteration(sampler, tasks).episode_return.mean(0))
    returns = np.array(returns)
    assert returns[:3].mean() < -2.5  # 5 steps x E[(a - target)^2] with a ~ N(0, 0.5)
    assert returns[-5:].mean() > 0.5 * returns[:3].mean()
    first, last = returns[-10:, 0].mean(), returns[-10:, -1].mean()
    assert last > first + 0.2, (first, last)


# -- resume (CLI, CPU) ------------------------------------------------------------------------
RL2_CLI = ["gru_size=16", "minibatch_size=1"]  # over test_train's tiny settings


def read_rows(path, wall_column):
    lines = path.read_text().splitlines()
    return [",".join(v for i, v in enumerate(line.split(",")) if i != wall_column) for line in lines]


def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert main(train_args(reference, 960, agent="rl2", extra=RL2_CLI)) == 0
    sigkill_after_progress(train_args(killed, 960, agent="rl2", extra=RL2_CLI), killed, lines=12)
    partial = read_rows(killed / "progress.csv", 1)
    assert 12 < len(partial) < len(read_rows(reference / "progress.csv", 1)), "kill came too late"

    assert main(train_args(killed, 960, agent="rl2", extra=RL2_CLI)) == 0
    assert read_rows(killed / "progress.csv", 1) == read_rows(reference / "progress.csv", 1)
    assert read_rows(killed / "metrics.csv", 2) == read_rows(reference / "metrics.csv", 2)


# -- GPU (skipped without CUDA; part of the GPU proof) ------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def cuda_pair(**overrides):
    """(graphed, eager) agents on the GPU with the same weights (same seed) as tiny_rl2's."""
    suite = ToySuite(fall_at=4)
    return tuple(RL2Agent(cfg.build(RL2Config, {**TINY, **overrides}), suite, torch.device("cuda"), 0,
                          settings=AcceleratedSettings(cuda_graphs=graphs)) for graphs in (True, False))


@cuda
def test_gpu_graphed_acting_matches_eager_and_cpu():
    graphed, eager = cuda_pair(normalize_observations=True)
    cpu = tiny_rl2(normalize_observations=True)
    batches = []
    for agent in (graphed, eager, cpu):
        agent.record_memory = True
        with TrialSampler(agent.suite, num_envs=4, seed=3) as sampler:
            batches.append(sampler.run(agent, agent.suite.tasks("test", 0, 4), deterministic=True))
    for other in batches[1:]:
        for key in ("logp", "value", "memory"):
            np.testing.assert_allclose(batches[0].extras[key], other.extras[key], rtol=1e-4, atol=1e-5)


@cuda
def test_gpu_ppo_ratio_is_one_before_the_first_update():
    """Acting (GRU cell, CUDA graph) and learning (cuDNN GRU, TF32 off) agree on the GPU."""
    agent, _ = cuda_pair(trials_per_update=4)
    with TrialSampler(agent.suite, num_envs=4) as sampler:
        batch = sampler.run(agent, agent.suite.tasks("train", 0, 4))
    calls = record_evaluate(agent)
    stats = agent.update(batch)
    assert calls[0]["log_ratio"].abs().max().item() < 1e-4
    assert all(np.isfinite(v) for v in stats.values())


@cuda
def test_gpu_checkpoints_move_between_cpu_and_gpu():
    gpu, _ = cuda_pair()
    with TrialSampler(gpu.suite, num_envs=4) as sampler:
        batch = sampler.run(gpu, gpu.suite.tasks("train", 0, 4))
    gpu.update(copy.deepcopy(batch))
    cpu = tiny_rl2()
    cpu.load_state_dict(gpu.state_dict())
    cpu.update(copy.deepcopy(batch))
    gpu.load_state_dict(cpu.state_dict())
    gpu.update(copy.deepcopy(batch))
    assert all(torch.isfinite(p).all() for p in gpu.model.parameters())
