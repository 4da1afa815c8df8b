"""VariBAD: the belief across a trial, acting vs. learning, the ELBO, which parameters each loss
moves, resume, and a tiny learning run (the interface contract is in test_agent_contract.py)."""

import copy

import numpy as np
import pytest
import torch

from baselines.varibad import VariBADAgent, VariBADConfig, elbo_loss
from baselines.varibad.varibad import TrialBuffer, gaussian_kl
from test_agent_contract import step_input
from test_rl2 import read_rows
from test_train import train_args
from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.cli import main
from trmrl.sampling import TrialSampler
from trmrl.train import resolve

TINY = dict(encoder_gru=8, latent_dim=2, policy_hidden=(8,), decoder_hidden=(8,), state_embed=4,
            action_embed=4, reward_embed=4, trials_per_update=4, minibatch_size=8, epochs=2,
            vae_batch_trials=2, vae_subsample_elbos=3)


def tiny_varibad(suite=None, seed=0, **overrides):
    config = cfg.build(VariBADConfig, {**TINY, **overrides})
    return VariBADAgent(config, suite or ToySuite(fall_at=4), torch.device("cpu"), seed)


def act_sequence(agent, steps):
    """Deterministic actions and belief means for a list of StepInputs, from one reset."""
    agent.reset(len(steps[0].obs))
    agent.record_memory = True
    outputs = [agent.act(step, deterministic=True) for step in steps]
    return (np.stack([o.action for o in outputs], 1), np.stack([o.extras["memory"] for o in outputs], 1))


def random_steps(suite, n, length, seed=0, episode_length=4):
    rng = np.random.default_rng(seed)
    return [step_input(suite, n, rng, episode_start=t % episode_length == 0) for t in range(length)]


def sample_batch(agent, n, seed=0):
    with TrialSampler(agent.suite, num_envs=n, seed=seed) as sampler:
        return sampler.run(agent, agent.suite.tasks("train", seed, n))


# -- the belief ------------------------------------------------------------------------------------
def test_acting_beliefs_equal_the_batch_unroll():
    agent = tiny_varibad()
    steps = random_steps(agent.suite, 3, 10)
    _, belief_mean = act_sequence(agent, steps)
    x = torch.from_numpy(np.stack([s.augmented() for s in steps], 1))
    with torch.no_grad():
        batch_belief = agent.model.beliefs(x)
    np.testing.assert_allclose(belief_mean, batch_belief[..., :2].numpy(), atol=1e-6, rtol=0)


def test_belief_is_carried_across_episodes_and_reset_between_trials():
    agent = tiny_varibad()
    steps = random_steps(agent.suite, 2, 9, episode_length=4)  # episodes start at 0, 4, 8
    for step in steps:  # both trials see the same inputs except one early reward
        for field in ("obs", "prev_action", "prev_reward"):
            getattr(step, field)[1] = getattr(step, field)[0]
    steps[1].prev_reward[1] += 1.0
    actions, beliefs = act_sequence(agent, steps)
    # two rows of one batch with equal inputs: a vectorised kernel (AVX-512) may round the
    # rows differently, so they agree to float32 rounding, not bit for bit
    np.testing.assert_allclose(beliefs[0, 0], beliefs[1, 0], rtol=1e-6, atol=1e-7)
    for t in (1, 4, 8):  # remembered in the same episode and in the later ones
        assert not np.allclose(beliefs[0, t], beliefs[1, t], atol=1e-7)
        assert not np.allclose(actions[0, t], actions[1, t], atol=1e-7)
    other = random_steps(agent.suite, 2, 9, seed=5)
    alone = act_sequence(agent, steps)
    act_sequence(agent, other)  # another trial, then a reset
    for a, b in zip(alone, act_sequence(agent, steps)):
        np.testing.assert_array_equal(a, b)


# -- PPO on (s, belief) and the VAE ----------------------------------------------------------------
def test_ppo_ratio_is_one_before_the_first_update_and_the_policy_gradient_skips_the_vae():
    agent = tiny_varibad(vae_updates=0, trials_per_update=4)
    batch = sample_batch(agent, 4)
    log_ratios, evaluate = [], agent.evaluate

    def recording(minibatch):
        log_prob, entropy, value = evaluate(minibatch)
        log_ratios.append((log_prob - minibatch["logp"]).detach())
        return log_prob, entropy, value

    agent.evaluate = recording
    vae_before = [p.clone() for p in agent.model.vae_parameters()]
    policy_before = [p.clone() for p in agent.model.policy_parameters()]
    agent.update(batch)
    assert log_ratios[0].abs().max().item() < 1e-6
    assert all(torch.equal(a, b) for a, b in zip(vae_before, agent.model.vae_parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(policy_before, agent.model.policy_parameters()))


def test_vae_steps_move_only_the_encoder_and_decoder():
    agent = tiny_varibad(epochs=1)
    batch = sample_batch(agent, 4)  # before the copy: sampling draws from the agent's generator
    twin = copy.deepcopy(agent)
    twin.config.vae_updates = 0
    agent.update(copy.deepcopy(batch))
    twin.update(batch)
    for a, b in zip(agent.model.policy_parameters() + agent.model.value_parameters(),
                    twin.model.policy_parameters() + twin.model.value_parameters()):
        assert torch.equal(a, b)  # the VAE steps did not touch them
    assert not all(torch.equal(a, b) for a, b in zip(agent.model.vae_parameters(),
                                                     twin.model.vae_parameters()))
    assert all(p.grad is None for p in agent.model.vae_parameters())  # none left for PPO's clip


def test_elbo_decreases_on_a_fixed_batch():
    agent = tiny_varibad(encoder_gru=16, decoder_hidden=(32,), vae_subsample_elbos=0)
    trials = agent.trials(sample_batch(agent, 6))

    def loss(seed):
        return elbo_loss(agent.model, trials, agent.config, torch.Generator().manual_seed(seed))

    before = np.mean([loss(s)[0].item() for s in range(5)])
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        value, _ = elbo_loss(agent.model, trials, agent.config, generator)
        agent.vae_optimizer.zero_grad()
        value.backward()
        agent.vae_optimizer.step()
    after = np.mean([loss(s)[0].item() for s in range(5)])
    assert after < 0.5 * before, (before, after)


def test_elbo_ignores_padding_and_kl_matches_torch():
    agent = tiny_varibad(vae_subsample_elbos=0)
    batch = sample_batch(agent, 3)
    assert not batch.valid.all()
    trials = agent.trials(batch)
    garbage = {k: v.clone() for k, v in trials.items()}
    pad = ~garbage["valid"]
    for key in ("x", "action", "reward", "next_obs"):
        garbage[key][pad] = 1e6
    a, _ = elbo_loss(agent.model, trials, agent.config, torch.Generator().manual_seed(0))
    b, _ = elbo_loss(agent.model, garbage, agent.config, torch.Generator().manual_seed(0))
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    mu_q, mu_p, lv_q, lv_p = torch.randn(4, 7, 3).unbind(0)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_q, (0.5 * lv_q).exp()),
        torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), expected)


def test_trial_buffer_keeps_the_most_recent_trials_and_round_trips():
    buffer = TrialBuffer(3)
    for start in (0, 2):  # trials 0, 1 then 2, 3: trial 0 is dropped
        trials = {"x": torch.arange(start, start + 2).float()[:, None, None].expand(2, 4, 1),
                  "action": torch.zeros(2, 4, 1), "reward": torch.zeros(2, 4),
                  "next_obs": torch.zeros(2, 4, 1), "valid": torch.ones(2, 4, dtype=torch.bool)}
        buffer.add(trials)
    assert buffer.size == 3 and sorted(buffer.data["x"][:, 0, 0].tolist()) == [1, 2, 3]
    restored = TrialBuffer(3)
    restored.load_state_dict(buffer.state_dict(), torch.device("cpu"))
    assert restored.size == 3 and restored.next == buffer.next
    assert torch.equal(restored.data["x"], buffer.data["x"])


def test_config_defaults_and_errors():
    vel = resolve("varibad", "cheetah-vel", 0, device="cpu").hyperparameters
    dir_ = resolve("varibad", "cheetah-dir", 0, device="cpu").hyperparameters
    goal = resolve("varibad", "ant-goal", 0, device="cpu").hyperparameters
    steps = vel.trials_per_update * 400  # 200 steps x 2 episodes per trial
    assert (vel.epochs, steps // vel.minibatch_size) == (2, 8)  # published epochs / minibatches
    assert (dir_.epochs, steps // dir_.minibatch_size) == (16, 4)
    assert (goal.epochs, steps // goal.minibatch_size, goal.latent_dim) == (2, 1, 10)
    assert (vel.gamma, vel.gae_lambda, vel.clip, vel.lr_policy, vel.entropy_coef, vel.kl_weight,
            vel.vae_lr, vel.latent_dim, vel.encoder_gru) == (0.97, 0.9, 0.1, 7e-4, 0.01, 0.1, 1e-3, 5, 128)
    with pytest.raises(cfg.ConfigError, match="latent_dim must be positive"):
        cfg.build(VariBADConfig, {"latent_dim": 0})


# -- learning ---------------------------------------------------------------------------------
def test_the_vae_learns_a_belief_that_identifies_the_task():
    """Toy suite, reward -(a - target)^2: after VAE training on trials of the initial policy,
    the belief mean predicts the target linearly once rewards came in (two steps resolve the
    sign of a - target), and the prior before any step knows nothing."""
    suite = ToySuite()
    agent = tiny_varibad(suite, seed=1, encoder_gru=16, decoder_hidden=(32,), init_std=0.5,
                         vae_subsample_elbos=0, vae_batch_trials=16, vae_buffer_trials=256,
                         vae_lr=1e-2)
    rng = np.random.default_rng(0)
    generator = torch.Generator().manual_seed(0)
    with TrialSampler(suite, num_envs=32, seed=1) as sampler:
        for _ in range(8):
            agent.buffer.add(agent.trials(sampler.run(agent, suite.sample_tasks(rng, 32))))
        for _ in range(600):
            loss, _ = elbo_loss(agent.model, agent.buffer.sample(16, generator), agent.config, generator)
            agent.vae_optimizer.zero_grad()
            loss.backward()
            agent.vae_optimizer.step()
        tasks = suite.sample_tasks(rng, 64)
        batch = sampler.run(agent, tasks)
    with torch.no_grad():
        belief_mean = agent.model.beliefs(torch.from_numpy(batch.augmented_inputs()))[..., :2].numpy()
    target = np.array([task.params["target"] for task in tasks])

    def r_squared(t):  # of the best linear prediction of the target from the belief at step t
        X = np.c_[belief_mean[:, t], np.ones(len(target))]
        residual = X @ np.linalg.lstsq(X, target, rcond=None)[0] - target
        return 1 - (residual ** 2).sum() / ((target - target.mean()) ** 2).sum()

    assert r_squared(0) < 0.2  # only s_0 seen: nothing about the task
    assert r_squared(5) > 0.9, r_squared(5)  # after the first episode (5 steps)


def test_tiny_training_run_improves():
    suite = ToySuite()
    agent = tiny_varibad(suite, seed=1, encoder_gru=16, policy_hidden=(32,), decoder_hidden=(32,),
                         trials_per_update=8, minibatch_size=40, epochs=4, gamma=0.5, init_std=0.5,
                         lr_policy=3e-3, lr_value=3e-3, entropy_coef=0.0, vae_subsample_elbos=0,
                         vae_batch_trials=8, vae_updates=5, vae_buffer_trials=64)
    rng = np.random.default_rng(0)
    returns = []
    with TrialSampler(suite, num_envs=8, seed=1) as sampler:
        for _ in range(60):
            result = agent.train_iteration(sampler, suite.sample_tasks(rng, 8))
            returns.append(result.episode_return.mean())
    assert np.mean(returns[-10:]) > np.mean(returns[:3]) + 1.0, (returns[:3], returns[-10:])


# -- resume (CLI, CPU) ------------------------------------------------------------------------
VARIBAD_CLI = ["encoder_gru=16", "minibatch_size=20", "vae_buffer_trials=5",
               "vae_batch_trials=2"]  # over test_train's tiny settings


def test_resume_reproduces_an_uninterrupted_run(tmp_path):
    """Stop after 480 of 960 steps, resume: the same rows as one run (VAE buffer and
    optimiser included in the checkpoint)."""
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    for out, steps in ((reference, 960), (resumed, 480), (resumed, 960)):
        assert main(train_args(out, steps, agent="varibad", extra=VARIBAD_CLI)) == 0
    assert read_rows(resumed / "progress.csv", 1) == read_rows(reference / "progress.csv", 1)
    assert read_rows(resumed / "metrics.csv", 2) == read_rows(reference / "metrics.csv", 2)


def test_reward_scaling_divides_by_the_running_std_of_the_discounted_return():
    agent = tiny_varibad(normalize_rewards=True, gamma=0.5)
    batch = sample_batch(agent, 4)
    first = agent.scaled_rewards(batch)  # no statistics yet: unscaled
    np.testing.assert_allclose(first, np.clip(batch.reward, -10, 10), rtol=1e-6)
    agent.update(batch)
    returns = np.zeros_like(batch.reward, dtype=np.float64)
    for t in range(batch.reward.shape[1]):
        returns[:, t] = (returns[:, t - 1] * 0.5 if t else 0) + batch.reward[:, t]
    std = returns[batch.valid].std()
    np.testing.assert_allclose(agent.scaled_rewards(batch), np.clip(batch.reward / std, -10, 10),
                               rtol=1e-5)
