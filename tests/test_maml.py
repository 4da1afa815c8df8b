"""MAML-TRPO: the inner step and the second-order outer gradient through it, TRPO's KL bound,
adaptation inside an evaluation trial, the baseline, resume, and a tiny learning check (the
interface contract is in test_agent_contract.py)."""

import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from baselines.maml import MAMLAgent, MAMLConfig
from baselines.maml.maml import (conjugate_gradient, episode_advantages, fit_baseline, grouped,
                                 policy_mean)
from test_agent_contract import step_input
from test_train import rows, sigkill_after_progress, train_args
from toy_suite import ToyEnv, ToySuite
from trmrl import config as cfg
from trmrl.cli import main
from trmrl.ppo import gaussian_kl, gaussian_log_prob
from trmrl.sampling import TrialSampler
from trmrl.train import load_run

TINY = dict(hidden=(8,), trials_per_update=3, episodes_per_task=4)


def tiny_maml(suite=None, seed=0, **overrides):
    config = cfg.build(MAMLConfig, {**TINY, **overrides})
    return MAMLAgent(config, suite or ToySuite(), torch.device("cpu"), seed)


def random_task_data(groups, samples, obs_dim, act_dim, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(groups, samples, dtype=dtype)
    mask[0, -2:] = 0  # padding is ignored
    return {"obs": torch.randn(groups, samples, obs_dim, generator=g, dtype=dtype),
            "action": torch.randn(groups, samples, act_dim, generator=g, dtype=dtype),
            "advantage": torch.randn(groups, samples, generator=g, dtype=dtype), "mask": mask}


# -- the inner step and the outer gradient ---------------------------------------------------
def test_inner_step_moves_each_task_copy_along_its_own_gradient():
    agent = tiny_maml(inner_lr=0.3)
    data = random_task_data(2, 6, 2, 1, seed=0, dtype=torch.float32)
    adapted = agent.inner_step(grouped(agent.theta, 2), data, create_graph=False)
    for g in range(2):  # task g alone gives the same step as in the batch of two
        one = {k: v[g:g + 1] for k, v in data.items()}
        alone = agent.inner_step(grouped(agent.theta, 1), one, create_graph=False)
        for a, b, p in zip(adapted, alone, agent.theta):
            torch.testing.assert_close(a[g], b[0])
    moved = [not torch.allclose(a[0], p) for a, p in zip(adapted, agent.theta)]
    assert all(moved)  # every parameter, log std included, takes the step
    assert not torch.allclose(adapted[0][0], adapted[0][1])  # different data, different step


def test_outer_gradient_through_the_inner_step_matches_finite_differences():
    """d/dtheta of a post-update objective, second order, against central differences (float64);
    dropping the inner step's Hessian term (first-order MAML) would not match."""
    agent = tiny_maml(inner_lr=0.5)
    theta = [p.detach().double().requires_grad_() for p in agent.theta]
    with torch.no_grad():  # a larger output layer, so the second-order term matters
        theta[-3].normal_(0, 0.5)
    pre = random_task_data(2, 6, 2, 1, seed=1)
    post = random_task_data(2, 5, 2, 1, seed=2)

    def objective(params, create_graph=True):
        adapted = agent.inner_step(grouped(params, 2), pre, create_graph=create_graph)
        logp = gaussian_log_prob(policy_mean(adapted, post["obs"]), adapted[-1], post["action"])
        return (logp * post["advantage"] * post["mask"]).sum()

    analytic = torch.autograd.grad(objective(theta), theta)
    eps = 1e-6
    for p, grad in zip(theta, analytic):
        numeric = torch.zeros_like(p)
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += eps
                up = objective(theta, create_graph=False)
                p.view(-1)[i] -= 2 * eps
                down = objective(theta, create_graph=False)
                p.view(-1)[i] += eps
            numeric.view(-1)[i] = (up - down) / (2 * eps)
        torch.testing.assert_close(grad, numeric, rtol=1e-5, atol=1e-7)

    # first order: the adapted parameters' gradient applied to theta, as if the step were constant
    first_order = []
    adapted = [a.detach().requires_grad_() for a in agent.inner_step(grouped(theta, 2), pre, False)]
    logp = gaussian_log_prob(policy_mean(adapted, post["obs"]), adapted[-1], post["action"])
    for g in torch.autograd.grad((logp * post["advantage"] * post["mask"]).sum(), adapted):
        first_order.append(g.sum(0))
    assert max(float((a - f).abs().max()) for a, f in zip(analytic, first_order)) > 1e-3


def test_conjugate_gradient_solves_a_positive_definite_system():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    a, b = m @ m.T + 0.5 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    x, residual = conjugate_gradient(lambda v: a @ v, b, iters=20)
    torch.testing.assert_close(x, torch.linalg.solve(a, b))
    assert residual < 1e-10


# -- the outer TRPO step -----------------------------------------------------------------------
@pytest.mark.parametrize("max_kl", [1e-2, 1e-4])
def test_trpo_step_improves_the_surrogate_within_the_kl_bound(max_kl):
    agent = tiny_maml(max_kl=max_kl)
    pre = random_task_data(3, 20, 2, 1, seed=3, dtype=torch.float32)
    post = random_task_data(3, 20, 2, 1, seed=4, dtype=torch.float32)
    before = [p.detach().clone() for p in agent.theta]

    def post_update_policy(theta):
        adapted = agent.inner_step(grouped(theta, 3), pre, create_graph=False)
        return policy_mean(adapted, post["obs"]), adapted[-1]

    old_mean, old_log_std = post_update_policy(before)
    metrics = agent.outer_step(pre, post)
    assert metrics["step_fraction"] > 0, "no step accepted on a random problem"
    mean, log_std = post_update_policy([p.detach() for p in agent.theta])
    kl = (gaussian_kl(old_mean, 2 * old_log_std, mean, 2 * log_std) * post["mask"]).sum(-1) / post["mask"].sum(-1)
    assert 0 < float(kl.mean()) <= max_kl
    assert metrics["kl"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert metrics["surrogate_after"] > metrics["surrogate_before"]
    # the full step aims at the bound: the accepted KL is of its order, not far below
    assert float(kl.mean()) > 0.1 * max_kl * metrics["step_fraction"] ** 2


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(5)
    m0, m1 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    s0, s1 = torch.randn(1, 3, generator=g) * 0.3, torch.randn(1, 3, generator=g) * 0.3
    expected = torch.distributions.kl_divergence(
        torch.distributions.Normal(m0, s0.exp()), torch.distributions.Normal(m1, s1.exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl(m0, 2 * s0, m1, 2 * s1), expected)  # as MAML calls it


# -- advantages ---------------------------------------------------------------------------------
def test_linear_baseline_fits_returns_it_can_express_and_advantages_are_standardised():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 7, 5))
    mask = np.ones((3, 7), bool)
    mask[2, 4:] = False
    truth = rng.normal(size=5)
    returns = features @ truth
    returns[~mask] = 1e6  # padding must not enter the fit
    np.testing.assert_allclose(fit_baseline(features, returns, mask, reg=1e-10), truth, rtol=1e-6)

    obs, reward = rng.normal(size=(4, 10, 2)), rng.normal(size=(4, 10))
    mask = np.ones((4, 10), bool)
    mask[1, 6:] = False
    advantage = episode_advantages(obs, reward, mask, gamma=0.99, lam=1.0, reg=1e-5)
    assert (advantage[~mask] == 0).all()
    assert advantage[mask].mean() == pytest.approx(0, abs=1e-9)
    assert advantage[mask].std() == pytest.approx(1, rel=1e-6)


# -- acting: adaptation within an evaluation trial ----------------------------------------------
def test_a_trial_adapts_at_each_episode_start_and_reset_restores_theta():
    agent = tiny_maml(inner_lr=0.5)
    suite, rng = agent.suite, np.random.default_rng(0)
    steps = [step_input(suite, 3, rng, episode_start=t % 4 == 0) for t in range(12)]
    for n, s in enumerate(steps):  # rows see different rewards, so adapt differently
        s.prev_reward[:] = [0.0, 1.0, -1.0] if n % 2 else [0.5, -0.5, 2.0]

    def run():
        agent.reset(3)
        actions, params = [], []
        for s in steps:
            actions.append(agent.act(s, deterministic=True).action)
            params.append([p.clone() for p in agent._rows_params])
        return np.stack(actions, 1), params

    actions, params = run()
    theta = grouped([p.detach() for p in agent.theta], 3)
    for t in range(4):  # episode 1: theta itself
        assert all(torch.equal(p, q) for p, q in zip(params[t], theta))
    for t, expected_changes in ((4, True), (5, False), (8, True)):  # a step per episode start
        changed = not all(torch.equal(p, q) for p, q in zip(params[t], params[t - 1]))
        assert changed == expected_changes, t
    assert not torch.allclose(params[4][0][0], params[4][0][1])  # each row its own data
    again, params_again = run()  # reset: theta again, and the same (seeded) noise
    np.testing.assert_array_equal(actions, again)


class WideActionToySuite(ToySuite):
    """The toy task with an action box [0, 4] (centre 2, half-range 2)."""

    def spaces(self):
        observation_space, action_space = super().spaces()
        return observation_space, gym.spaces.Box(0.0, 4.0, action_space.shape, np.float32)


def test_action_scale_maps_the_policy_units_onto_the_action_box():
    suite = WideActionToySuite()
    plain, scaled = tiny_maml(suite), tiny_maml(suite, action_scale=10.0)
    step = step_input(suite, 3, np.random.default_rng(0), episode_start=True)
    plain.reset(3)
    scaled.reset(3)
    env_plain = plain.act(step, deterministic=True).action  # 2 + a * 2
    env_scaled = scaled.act(step, deterministic=True).action  # 2 + a * 2 / 10, the same a
    np.testing.assert_allclose((env_scaled - 2) * 10, env_plain - 2, rtol=1e-5)
    np.testing.assert_allclose(scaled.policy_units(env_scaled), (env_plain - 2) / 2, rtol=1e-5)


def test_inactive_rows_record_nothing():
    agent = tiny_maml()
    suite, rng = agent.suite, np.random.default_rng(1)
    agent.reset(2)
    for t in range(3):
        step = step_input(suite, 2, rng, episode_start=t == 0)
        step.active[1] = t == 0
        agent.act(step)
    assert agent._history["length"].tolist() == [3, 1]


# -- evaluation: N episodes per inner step (eval_episodes_per_step) ---------------------------
def record_inner_steps(agent, monkeypatch):
    """The per-task sample counts (mask sums, [G]) of every inner step the agent takes."""
    counts, inner_step = [], agent.inner_step

    def counting(params, data, create_graph):
        counts.append(data["mask"].sum(-1).tolist())
        return inner_step(params, data, create_graph)
    monkeypatch.setattr(agent, "inner_step", counting)
    return counts


@pytest.mark.parametrize("setting, per_step", [(3, 3), (None, 4)])
def test_evaluation_steps_on_the_configured_number_of_episodes(monkeypatch, setting, per_step):
    """Each inner step of the evaluation sees N whole episodes per task (None: as many as
    meta-training's inner step, episodes_per_task = 4), and each reported return is the
    mean over N fresh episodes with that step's parameters."""
    agent = tiny_maml(eval_episodes_per_step=setting, episodes_per_task=4)
    tasks = agent.suite.tasks("test", 0, 2)
    counts = record_inner_steps(agent, monkeypatch)
    consumed = ToyEnv.steps_taken
    returns, success = agent.evaluation_trials(tasks, episodes=3, horizon=None, seed=7)
    agent.close()
    H = agent.suite.horizon
    assert counts == [[per_step * H] * 2] * 2  # steps 1 and 2, each on N episodes per task
    assert ToyEnv.steps_taken - consumed == 2 * 3 * per_step * H  # tasks x rows x N episodes
    assert returns.shape == success.shape == (2, 3)
    assert ((0 <= success) & (success <= 1)).all()


def test_one_episode_per_step_leaves_evaluation_to_the_trials():
    assert tiny_maml(eval_episodes_per_step=1).evaluation_trials(
        ToySuite().tasks("test", 0, 2), episodes=3, horizon=None, seed=0) is None


def test_evaluation_is_repeatable_and_leaves_the_training_state_alone():
    agent = tiny_maml(eval_episodes_per_step=3)
    tasks = agent.suite.tasks("test", 0, 2)
    state = agent.state_dict()
    first = agent.evaluation_trials(tasks, episodes=3, horizon=None, seed=7)
    second = agent.evaluation_trials(tasks, episodes=3, horizon=None, seed=7)
    agent.close()
    for a, b in zip(first, second):  # one code path twice: bit for bit
        np.testing.assert_array_equal(a, b)
    after = agent.state_dict()
    assert after["collect_calls"] == state["collect_calls"]
    assert torch.equal(after["generator"], state["generator"])
    assert all(torch.equal(p, q) for p, q in zip(after["theta"], state["theta"]))


def test_evaluation_adapts_each_task_towards_its_target():
    """Reward -(a - target)^2: one inner step on a task's 20 evaluation episodes moves its
    action mean (about 0 at theta) towards its own target, so with targets away from 0 the
    return after the step beats theta's (the mean gain over 12 tasks is many standard errors
    wide; parameters mixed up between tasks would lose on half of them)."""
    agent = tiny_maml(inner_lr=1.0, init_std=0.5, eval_episodes_per_step=20)
    targets = [-0.9, -0.8, -0.7, -0.6, -0.5, -0.4, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    tasks = [agent.suite._task("test", i, t) for i, t in enumerate(targets)]
    returns, _ = agent.evaluation_trials(tasks, episodes=2, horizon=None, seed=3)
    agent.close()
    gain = returns[:, 1] - returns[:, 0]
    assert gain.mean() > 4 * gain.std() / math.sqrt(len(gain)), gain


def test_trmrl_evaluate_runs_the_configured_protocol(tmp_path):
    """`trmrl evaluate` writes what evaluation_trials computes for the trained agent, and an
    empty latent file (MAML has no episodic memory)."""
    run = tmp_path / "run"
    extra = ["episodes_per_task=2", "hidden=[8]", "eval_episodes_per_step=3"]
    assert main(train_args(run, steps=160, agent="maml", extra=extra)) == 0
    out, latents = tmp_path / "a.csv", tmp_path / "z.npz"
    assert main(["evaluate", "--run", str(run), "--protocol", "adaptation", "--out", str(out),
                 "--device", "cpu", "--tasks", "3", "--episodes", "2", "--latents", str(latents)]) == 0
    table = rows(out, drop_wall=False)[1:]
    spec, agent = load_run(run, "cpu")
    tasks = agent.suite.eval_tasks("test", spec.seed, 3)
    expected, _ = agent.evaluation_trials(tasks, 2, spec.hyperparameters.horizon, spec.seed + 20_000)
    agent.close()
    written = np.array([float(r[3]) for r in table]).reshape(3, 2)
    np.testing.assert_allclose(written, expected, atol=5e-5)  # the table rounds to 4 decimals
    assert np.load(latents)["memory"].shape == (0, 0)


# -- training ----------------------------------------------------------------------------------
def test_iteration_reports_pre_and_post_update_returns():
    agent = tiny_maml()
    tasks = agent.suite.tasks("train", 0, 3)
    with TrialSampler(agent.suite, num_envs=3) as sampler:
        result = agent.train_iteration(sampler, tasks)
    agent.close()
    horizon = agent.suite.horizon
    assert result.env_steps == 2 * 3 * 4 * horizon  # pre and post: 3 tasks x 4 episodes
    assert result.episode_return.shape == (3, 2)
    assert result.metrics["pre_update_return"] == pytest.approx(result.episode_return[:, 0].mean())


def test_the_inner_step_improves_the_return_on_the_toy_suite():
    """Reward -(a - target)^2: one policy-gradient step on a task's episodes moves the action
    mean towards its target, so post-update episodes beat pre-update ones (averaged over
    tasks and 3 iterations; the gap is many standard errors wide)."""
    agent = tiny_maml(inner_lr=1.0, trials_per_update=8, episodes_per_task=20, init_std=0.5)
    rng = np.random.default_rng(0)
    gaps = []
    with TrialSampler(agent.suite, num_envs=8) as sampler:
        for _ in range(3):
            result = agent.train_iteration(sampler, agent.suite.sample_tasks(rng, 8))
            gaps.append(result.episode_return[:, 1] - result.episode_return[:, 0])
    agent.close()
    gaps = np.concatenate(gaps)
    assert gaps.mean() > 4 * gaps.std() / math.sqrt(len(gaps)), gaps


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    extra = ["episodes_per_task=2", "hidden=[8]"]  # 2 tasks x 2 episodes x 20 steps x 2 = 160 steps
    reference = tmp_path / "reference"
    assert main(train_args(reference, steps=1600, agent="maml", extra=extra)) == 0
    killed = tmp_path / "killed"
    sigkill_after_progress(train_args(killed, steps=1600, agent="maml", extra=extra), killed, lines=12)
    partial = rows(killed / "progress.csv")
    assert 12 < len(partial) < len(rows(reference / "progress.csv")), "kill came too late"
    assert main(train_args(killed, steps=1600, agent="maml", extra=extra)) == 0
    assert rows(killed / "progress.csv") == rows(reference / "progress.csv")
    strip = lambda table: [r[:2] + r[3:] for r in table]  # noqa: E731  (metrics: wall_s is column 2)
    assert strip(rows(killed / "metrics.csv", False)) == strip(rows(reference / "metrics.csv", False))


def test_training_evaluations_use_the_agents_own_protocol():
    """progress.csv's test rows come from the protocol `trmrl evaluate` runs: with N > 1
    episodes per inner step, evaluation_trials on the evaluation sampler's tasks and seed."""
    from trmrl.train import evaluate_on_test

    agent = tiny_maml(eval_episodes_per_step=2, eval_tasks=2)
    with TrialSampler(agent.suite, 2, seed=5) as sampler:
        returns, success = evaluate_on_test(agent, sampler, seed=0)
        tasks = agent.suite.eval_tasks("test", 0, 2)
        expected = agent.evaluation_trials(tasks, sampler.episodes_per_trial, sampler.horizon, 5)
    agent.close()
    for ours, theirs in zip((returns, success), expected):  # one code path twice
        np.testing.assert_array_equal(ours, theirs)
    assert returns.shape == (2, agent.suite.episodes_per_trial)
