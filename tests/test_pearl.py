"""PEARL: the product of Gaussians and the KL term, prior vs posterior z while acting, which
losses reach the encoder, the buffers, the batch indices, a tiny learning run and resume (the
interface contract is in test_agent_contract.py; the CUDA graph in test_cuda.py)."""

import math

import numpy as np
import pytest
import torch

from baselines.pearl import PEARLAgent, PEARLConfig, PEARLSettings
from baselines.pearl.buffers import ContextStore, ReplayStore
from baselines.pearl.networks import MLP, kl_to_standard_normal, product_of_gaussians, tanh_gaussian_log_prob
from test_agent_contract import step_input
from test_rl2 import read_rows
from test_train import sigkill_after_progress, train_args
from toy_suite import ToyEnv, ToySuite
from trmrl import config as cfg
from trmrl.accel import BiasMvLinear
from trmrl.cli import main
from trmrl.envs import ENV_NAMES
from trmrl.sampling import TrialSampler
from trmrl.train import resolve

TINY = dict(trials_per_update=3, hidden=(8,), encoder_hidden=(8,), latent_dim=2, num_train_tasks=4,
            num_initial_steps=10, num_steps_prior=5, num_extra_rl_steps_posterior=10,
            num_train_steps_per_itr=3, meta_batch=3, batch_size=8, context_batch_size=4)


def tiny_pearl(suite=None, seed=0, **overrides):
    config = cfg.build(PEARLConfig, {**TINY, **overrides})
    return PEARLAgent(config, suite or ToySuite(fall_at=4), torch.device("cpu"), seed)


def random_steps(suite, n, length, seed=0, episode_length=4):
    rng = np.random.default_rng(seed)
    return [step_input(suite, n, rng, episode_start=t % episode_length == 0) for t in range(length)]


def act_sequence(agent, steps, deterministic=True):
    """Actions [n, T, act] and z [n, T, latent] for a list of StepInputs, from one reset."""
    agent.reset(len(steps[0].obs))
    agent.record_memory = True
    outputs = [agent.act(step, deterministic) for step in steps]
    return (np.stack([o.action for o in outputs], 1),
            np.stack([o.extras["memory"] for o in outputs], 1))


# -- the math -------------------------------------------------------------------------------
def test_product_of_gaussians_matches_the_closed_form():
    mu = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]])
    var = torch.tensor([[0.5, 2.0], [1.5, 0.25], [4.0, 1.0]])
    for n in (2, 3):
        m, v = mu[:n].double(), var[:n].double()
        expected_var = 1 / (1 / v).sum(0)
        expected_mu = expected_var * (m / v).sum(0)
        got_mu, got_var = product_of_gaussians(mu[:n], var[:n])
        torch.testing.assert_close(got_var.double(), expected_var)
        torch.testing.assert_close(got_mu.double(), expected_mu)
    # by hand: N(1, 0.5) x N(3, 1.5) = N((1/0.5 + 3/1.5) / (1/0.5 + 1/1.5), 1 / (2 + 2/3))
    got_mu, got_var = product_of_gaussians(mu[:2], var[:2])
    assert got_var[0].item() == pytest.approx(0.375) and got_mu[0].item() == pytest.approx(1.5)
    # a mask leaves factors out; batched over leading axes
    masked_mu, masked_var = product_of_gaussians(mu.expand(4, 3, 2), var.expand(4, 3, 2),
                                                 torch.tensor([1.0, 1.0, 0.0]).expand(4, 3))
    torch.testing.assert_close(masked_mu, got_mu.expand(4, 2))
    torch.testing.assert_close(masked_var, got_var.expand(4, 2))


def test_kl_and_tanh_gaussian_log_prob_match_torch_distributions():
    mu, log_var = torch.randn(2, 7, 3).unbind(0)
    var = log_var.exp()
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, var.sqrt()), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_to_standard_normal(mu, var), expected)
    scale = torch.tensor([0.5, 0.3, 1.0]).double()[:, None, None]  # |tanh| well below 1
    mean, log_std, noise = (torch.randn(3, 50, 2).double() * scale).unbind(0)
    pre_tanh = mean + log_std.exp() * noise
    squashed = torch.distributions.TransformedDistribution(
        torch.distributions.Normal(mean, log_std.exp()), torch.distributions.TanhTransform())
    expected = squashed.log_prob(torch.tanh(pre_tanh)).sum(-1)
    torch.testing.assert_close(tanh_gaussian_log_prob(noise, log_std, pre_tanh), expected)


def test_linear_layers_have_the_right_gradients_and_padded_inputs():
    x, w, b = torch.randn(6, 3).double(), torch.randn(4, 3).double(), torch.randn(4).double()
    assert torch.autograd.gradcheck(BiasMvLinear.apply, (x.requires_grad_(), w.requires_grad_(),
                                                    b.requires_grad_()))
    mlp = MLP([5, 7, 2], 0.5, torch.Generator().manual_seed(0))
    assert mlp.layers[0].weight.shape == (7, 8) and (mlp.layers[0].weight[:, 5:] == 0).all()
    x = torch.randn(3, 4, 5)  # any leading axes; parts are joined and padded
    layer0, layer1 = mlp.layers
    hidden = torch.relu(x @ layer0.weight[:, :5].t() + layer0.bias)
    expected = hidden @ layer1.weight.t() + layer1.bias
    torch.testing.assert_close(mlp(x), expected)
    torch.testing.assert_close(mlp([x[..., :2], x[..., 2:]]), expected)


# -- acting ---------------------------------------------------------------------------------
def test_episode_zero_uses_the_prior_and_later_episodes_the_posterior_of_all_transitions():
    agent = tiny_pearl(seed=3)
    n, L = 2, agent.config.latent_dim
    steps = random_steps(agent.suite, n, 9, episode_length=4)  # episodes start at 0, 4, 8
    _, z = act_sequence(agent, steps)
    generator = torch.Generator().manual_seed(agent.eval_seed)
    eps = [torch.randn((n, L), generator=generator) for _ in range(3)]  # one draw per episode
    np.testing.assert_allclose(z[:, 0], eps[0].numpy(), rtol=0, atol=0)  # N(0, I) draws
    assert (z[:, :4] == z[:, :1]).all() and (z[:, 4:8] == z[:, 4:5]).all()  # fixed per episode
    for start, k in ((4, 1), (8, 2)):  # every transition so far, the previous episode's last too
        context = np.stack([np.concatenate([steps[t - 1].obs, steps[t].prev_action,
                                            steps[t].prev_reward[:, None]], -1)
                            for t in range(1, start + 1)], 1)
        with torch.no_grad():
            mu, var = agent.nets.posterior(torch.from_numpy(context.astype(np.float32)))
        np.testing.assert_allclose(z[:, start], (mu + var.sqrt() * eps[k]).numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_exploration_episodes_keep_the_prior_then_the_posterior_sees_them_all():
    """oyster's evaluation: with exploration_episodes 2, episodes 0 and 1 run fresh prior
    draws and episode 2 the posterior of both episodes' transitions."""
    agent = tiny_pearl(seed=3, exploration_episodes=2)
    n, L = 2, agent.config.latent_dim
    steps = random_steps(agent.suite, n, 9, episode_length=4)  # episodes start at 0, 4, 8
    _, z = act_sequence(agent, steps)
    generator = torch.Generator().manual_seed(agent.eval_seed)
    eps = [torch.randn((n, L), generator=generator) for _ in range(3)]
    np.testing.assert_allclose(z[:, 0], eps[0].numpy(), rtol=0, atol=0)  # N(0, I) draws, as drawn
    np.testing.assert_allclose(z[:, 4], eps[1].numpy(), rtol=0, atol=0)
    context = np.stack([np.concatenate([steps[t - 1].obs, steps[t].prev_action,
                                        steps[t].prev_reward[:, None]], -1)
                        for t in range(1, 9)], 1)
    with torch.no_grad():
        mu, var = agent.nets.posterior(torch.from_numpy(context.astype(np.float32)))
    # act infers it with a padding mask over the rows' steps: the same sums up to float32 rounding
    np.testing.assert_allclose(z[:, 8], (mu + var.sqrt() * eps[2]).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(cfg.ConfigError, match="exploration_episodes"):
        tiny_pearl(exploration_episodes=0)


def test_the_posterior_depends_on_the_rows_transitions_and_reset_forgets():
    agent = tiny_pearl()
    same = random_steps(agent.suite, 2, 9, episode_length=4)
    other = random_steps(agent.suite, 2, 9, episode_length=4)
    for a, b in zip(same, other):  # identical inputs but one reward of row 1
        for name in ("obs", "prev_action", "prev_reward", "episode_start"):
            setattr(b, name, getattr(a, name).copy())
    other[2].prev_reward[1] += 1.0
    actions_a, z_a = act_sequence(agent, same)
    actions_b, z_b = act_sequence(agent, other)
    np.testing.assert_array_equal(z_a[0], z_b[0])  # row 0 saw the same transitions
    np.testing.assert_array_equal(z_a[1, :4], z_b[1, :4])  # episode 0: the prior, either way
    for t in (4, 8):  # the changed reward moved row 1's posterior in both later episodes
        assert not np.allclose(z_a[1, t], z_b[1, t], atol=1e-6)
        assert not np.allclose(actions_a[1, t], actions_b[1, t], atol=1e-7)
    act_sequence(agent, random_steps(agent.suite, 2, 9, seed=5), deterministic=False)
    for x, y in zip((actions_a, z_a), act_sequence(agent, same)):  # a reset forgets
        np.testing.assert_array_equal(x, y)


def test_padding_rows_never_reach_the_context():
    agent = tiny_pearl()
    runs = []
    for garbage in (1e6, -3.0):
        steps = random_steps(agent.suite, 2, 9, episode_length=4)
        for step in steps[2:]:  # row 1's trial ended after two steps: padding from then on
            step.active = np.array([True, False])
            step.obs[1], step.prev_action[1], step.prev_reward[1] = garbage, garbage, garbage
        runs.append(act_sequence(agent, steps))
    (actions_a, z_a), (actions_b, z_b) = runs
    np.testing.assert_array_equal(z_a, z_b)
    np.testing.assert_array_equal(actions_a[0], actions_b[0])


# -- which losses reach which parameters ------------------------------------------------------
def recording_steps(agent):
    """Record every parameter's gradient when each optimiser steps."""
    calls = []

    def wrap(optimizer, name):
        step = optimizer.step

        def recorded(*args, **kwargs):
            calls.append((name, {k: None if p.grad is None else p.grad.clone()
                                 for k, p in agent.nets.named_parameters()}))
            return step(*args, **kwargs)
        optimizer.step = recorded

    wrap(agent.critic_optimizer, "critic")
    wrap(agent.actor_optimizer, "actor")
    return calls


@pytest.mark.parametrize("kl_weight", [0.0, 0.1])
def test_the_q_loss_trains_the_encoder_and_the_policy_loss_does_not(kl_weight):
    agent = tiny_pearl(num_train_steps_per_itr=1, kl_weight=kl_weight)
    with TrialSampler(agent.suite, 3) as sampler:
        agent.train_iteration(sampler, [])
    calls = recording_steps(agent)
    agent.update(1)
    (_, at_critic), (_, at_actor) = calls

    def group(grads, prefix):
        return [g for k, g in grads.items() if k.startswith(prefix)]

    for name in ("encoder", "q1", "q2"):  # the Q loss (and KL) reach the encoder and Q nets
        assert all(g is not None and g.abs().sum() > 0 for g in group(at_critic, name)), name
    for name in ("policy", "v."):  # ... but not the policy or V
        assert all(g is None for g in group(at_critic, name)), name
    for name in ("policy", "v."):
        assert all(g is not None for g in group(at_actor, name)), name
    for a, b in zip(group(at_critic, "encoder"), group(at_actor, "encoder")):
        assert torch.equal(a, b)  # neither the V loss nor the policy loss reached the encoder
    for a, b in zip(group(at_critic, "q"), group(at_actor, "q")):
        assert torch.equal(a, b)  # the policy loss evaluates Q without training it
    assert all(g is None for g in group(at_critic, "v_target"))


def test_the_kl_term_reaches_the_encoder_only():
    grads = {}
    for weight in (0.0, 1.0):
        agent = tiny_pearl(num_train_steps_per_itr=1, kl_weight=weight)
        calls = recording_steps(agent)  # the first step: the same parameters either way
        with TrialSampler(agent.suite, 3) as sampler:
            agent.train_iteration(sampler, [])
        grads[weight] = calls[0][1]
    for key in grads[0.0]:
        if key.startswith("encoder"):
            assert not torch.equal(grads[0.0][key], grads[1.0][key]), key
        elif grads[0.0][key] is not None:
            assert torch.equal(grads[0.0][key], grads[1.0][key]), key


# -- collection and buffers --------------------------------------------------------------------
def record_collection(agent):
    collected = []
    collect = agent._collect

    def recording(kind, sampler, tasks, posterior):
        batch = collect(kind, sampler, tasks, posterior)
        collected.append((kind, tasks.copy(), posterior, batch))
        return batch
    agent._collect = recording
    return collected


def rows_of(batch, row, parts):
    valid = batch.valid[row]
    columns = {"obs": batch.obs, "action": batch.action, "reward": batch.reward[..., None],
               "terminated": batch.terminated[..., None].astype(np.float32),
               "next_obs": batch.next_obs}
    return np.concatenate([columns[p][row][valid] for p in parts], -1)


def test_buffers_hold_valid_steps_only_and_the_encoder_buffer_only_prior_data():
    agent = tiny_pearl(trials_per_update=4, num_train_tasks=3)  # 4 draws of 3 tasks: a repeat
    collected = record_collection(agent)
    before = ToyEnv.steps_taken
    with TrialSampler(agent.suite, 3) as sampler:
        results = [agent.train_iteration(sampler, []) for _ in range(2)]
    agent.close()
    assert sum(r.env_steps for r in results) == ToyEnv.steps_taken - before
    assert [(kind, posterior) for kind, _, posterior, _ in collected] == [
        ("initial", False), ("prior", False), ("posterior", True),
        ("prior", False), ("posterior", True)]
    assert all(not batch.valid.all() for *_, batch in collected)  # fall_at=4: padding
    # 10 initial steps = 2 episodes, 5 prior = 1, 10 posterior = 2: [draws, 1 + 2] returns
    assert results[1].episode_return.shape == (4, 3)
    replay_parts = ["obs", "action", "reward", "terminated", "next_obs"]
    for task in range(3):
        expected = [rows_of(batch, row, replay_parts) for _, batch_tasks, _, batch in collected
                    for row in np.flatnonzero(batch_tasks == task)]
        stored = agent.replay.data[agent.replay.rows(task)].numpy()
        np.testing.assert_array_equal(stored, np.concatenate(expected))
        assert (stored[:, 0] < 4).all() and (stored[:, -2] > 0).all()  # steps 0-3 only: no padding
        assert (stored[:, 4] == (stored[:, -2] == 4)).all()  # terminated at the 4th step
    # encoder buffers: the prior data of each task's last collection, nothing from posteriors
    last_prior = {}
    for kind, tasks, posterior, batch in collected:
        for row, task in enumerate(tasks):
            if not posterior:
                last_prior[int(task)] = rows_of(batch, row, ["obs", "action", "reward"])
    for task in range(3):
        begin = task * agent.contexts.capacity
        stored = agent.contexts.data[begin:begin + agent.contexts.size[task]].numpy()
        np.testing.assert_array_equal(stored, last_prior[task])


def test_train_iteration_ignores_the_trainers_tasks():
    metrics = []
    for tasks in ([], ToySuite().tasks("train", 7, 3)):
        agent = tiny_pearl()
        with TrialSampler(agent.suite, 3, seed=2) as sampler:
            result = agent.train_iteration(sampler, tasks)
        agent.close()
        metrics.append((result.metrics, result.episode_return.tolist()))
    assert metrics[0] == metrics[1]


def test_task_pool_merges_repeated_tasks_and_takes_the_published_sizes():
    from trmrl.envs import make_suite
    suite = make_suite("cheetah-dir")
    config = resolve("pearl", "cheetah-dir", 0, device="cpu").hyperparameters
    agent = PEARLAgent(config, suite, torch.device("cpu"), 0)
    assert sorted(task.value for task in agent.train_tasks) == [-1.0, 1.0]  # forward, backward
    vel = resolve("pearl", "cheetah-vel", 0, device="cpu").hyperparameters
    agent = PEARLAgent(vel, make_suite("cheetah-vel"), torch.device("cpu"), 0)
    assert len(agent.train_tasks) == 100


def test_batch_indices_pick_rows_of_the_drawn_tasks():
    agent = tiny_pearl(trials_per_update=2, num_train_tasks=4, meta_batch=5, batch_size=6,
                       context_batch_size=7)
    with TrialSampler(agent.suite, 2) as sampler:
        for _ in range(3):
            agent.train_iteration(sampler, [])
    agent.close()
    tasks, rl_rows, ctx_rows = agent.draw_indices(50)
    assert tasks.shape == (50, 5) and rl_rows.shape == (50, 30) and ctx_rows.shape == (50, 35)
    assert set(tasks.unique().tolist()) == {0, 1, 2, 3}
    cap = agent.contexts.capacity
    for s in range(50):
        for b in range(5):
            task = int(tasks[s, b])
            rows = set(rl_rows[s, 6 * b:6 * b + 6].tolist())
            assert rows <= set(agent.replay.rows(task).tolist())
            ctx = ctx_rows[s, 7 * b:7 * b + 7]
            assert ((ctx >= task * cap) & (ctx < task * cap + agent.contexts.size[task])).all()


def test_replay_ring_drops_the_oldest_and_round_trips():
    store = ReplayStore(2, 3, capacity=5, device=torch.device("cpu"))

    def block(start, n):
        values = torch.arange(start, start + n, dtype=torch.float32)
        return values[:, None].expand(n, 3).contiguous()
    store.add(0, block(0, 3))
    store.add(1, block(100, 2))
    store.add(0, block(3, 4))  # 7 for task 0: 0 and 1 are overwritten in place
    assert sorted(store.data[store.rows(0), 0].tolist()) == [2, 3, 4, 5, 6]
    assert store.data[store.rows(1), 0].tolist() == [100, 101] and store.used == 7
    store.add(0, block(10, 12))  # more than fit at once: the newest 5
    assert sorted(store.data[store.rows(0), 0].tolist()) == [17, 18, 19, 20, 21]
    restored = ReplayStore(2, 3, capacity=5, device=torch.device("cpu"))
    restored.load_state_dict(store.state_dict())
    for task in (0, 1):
        assert torch.equal(restored.data[restored.rows(task)], store.data[store.rows(task)])
    restored.add(0, block(30, 1))
    store.add(0, block(30, 1))
    assert sorted(restored.data[restored.rows(0), 0].tolist()) == \
        sorted(store.data[store.rows(0), 0].tolist()) == [18, 19, 20, 21, 30]
    contexts = ContextStore(2, 1, capacity=3, device=torch.device("cpu"))
    contexts.add(1, torch.ones(2, 1))
    with pytest.raises(RuntimeError, match="overflows"):
        contexts.add(1, torch.ones(2, 1))


# -- config -------------------------------------------------------------------------------------
def test_config_defaults_and_errors():
    values = {env: resolve("pearl", env, 0, device="cpu").hyperparameters for env in ENV_NAMES}
    vel = values["cheetah-vel"]
    assert vel == PEARLConfig()  # the dataclass defaults are cheetah-vel's
    vel_settings = resolve("pearl", "cheetah-vel", 0, device="cpu").settings
    assert vel_settings == PEARLSettings()
    assert (vel.hidden, vel.encoder_hidden, vel.latent_dim, vel.reward_scale, vel.gamma, vel.tau,
            vel.kl_weight, vel.meta_batch, vel.batch_size, vel.context_batch_size,
            vel.num_train_tasks, vel.trials_per_update, vel.num_steps_prior,
            vel.num_extra_rl_steps_posterior, vel.num_initial_steps, vel.num_train_steps_per_itr,
            vel_settings.steps) == ((300, 300, 300), (200, 200, 200), 5, 5.0, 0.99, 0.005, 0.1, 16, 256,
                           100, 100, 5, 400, 600, 2000, 2000, 1_000_000)
    assert {vel.lr_policy, vel.lr_q, vel.lr_v, vel.lr_encoder} == {3e-4}
    for env in ("ml1-reach", "ml1-push", "ml1-pick-place", "ml10", "ml45"):
        assert (values[env].latent_dim, values[env].reward_scale) == (7, 10.0)
    assert values["ant-goal"].kl_weight == 1.0 and values["walker-params"].use_next_obs_in_context
    with pytest.raises(cfg.ConfigError, match="meta_batch must be positive"):
        cfg.build(PEARLConfig, {"meta_batch": 0})
    with pytest.raises(cfg.ConfigError, match="tau must be"):
        cfg.build(PEARLConfig, {"tau": 0.0})


# -- learning ---------------------------------------------------------------------------------
def test_the_posterior_separates_two_tasks_after_training():
    """Toy suite, reward -(a - target)^2, two training tasks (targets -0.6, +0.6): after ten
    iterations the posteriors of the two tasks' context data lie several standard deviations
    apart (the untrained encoder gives both nearly the same), and reading a whole trial's
    transitions gives each task the same side."""
    suite = ToySuite()
    agent = tiny_pearl(suite, trials_per_update=2, hidden=(32, 32), encoder_hidden=(32, 32),
                       num_train_tasks=2, num_initial_steps=50, num_steps_prior=10,
                       num_extra_rl_steps_posterior=10, num_train_steps_per_itr=100,
                       meta_batch=4, batch_size=32, context_batch_size=16, gamma=0.5,
                       lr_policy=1e-3, lr_q=1e-3, lr_v=1e-3, lr_encoder=1e-3)
    agent.train_tasks = [suite._task("train", 0, -0.6), suite._task("train", 1, 0.6)]

    def separation():
        cap = agent.contexts.capacity
        with torch.no_grad():
            (mu_a, var_a), (mu_b, var_b) = [
                agent.nets.posterior(agent.contexts.data[t * cap:t * cap + agent.contexts.size[t]])
                for t in (0, 1)]
        return ((mu_a - mu_b).abs() / (var_a + var_b).sqrt()).max().item()

    with TrialSampler(suite, 2, seed=1) as sampler:
        agent.train_iteration(sampler, [])
        untrained = separation()
        for _ in range(9):
            agent.train_iteration(sampler, [])
        agent.close()
        assert untrained < 0.5 and separation() > 3.0, (untrained, separation())


# -- resume (CLI, CPU) ------------------------------------------------------------------------
PEARL_CLI = ["hidden=[16,16]", "encoder_hidden=[16]", "latent_dim=2", "num_train_tasks=3",
             "num_initial_steps=20", "num_steps_prior=20", "num_extra_rl_steps_posterior=20",
             "num_train_steps_per_itr=40", "meta_batch=2", "batch_size=16", "context_batch_size=8"]


def pearl_args(out, steps):
    """test_train's tiny cheetah-vel run: 2 draws x (20 prior + 20 posterior) steps per iteration."""
    return train_args(out, steps, agent="pearl", extra=PEARL_CLI)


def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path):
    """Killed after a few checkpointed iterations and resumed: the same rows as one run
    (buffers, optimisers, generators and sampler calls are in the checkpoint)."""
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    steps = 1500  # 60 initial + 80 per iteration: 18 iterations
    assert main(pearl_args(reference, steps)) == 0
    sigkill_after_progress(pearl_args(killed, steps), killed, lines=14)
    partial = read_rows(killed / "progress.csv", 1)
    assert 14 < len(partial) < len(read_rows(reference / "progress.csv", 1)), "kill came too late"
    assert main(pearl_args(killed, steps)) == 0
    assert read_rows(killed / "progress.csv", 1) == read_rows(reference / "progress.csv", 1)
    assert read_rows(killed / "metrics.csv", 2) == read_rows(reference / "metrics.csv", 2)
    assert math.isfinite(float(read_rows(reference / "metrics.csv", 2)[-1].split(",")[2]))
