"""The TrMRL encoder, T-Fixup, PPO pieces, and agreement between acting and learning."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.agents.reference import MemorylessAgent, OracleAgent, ReferenceConfig
from trmrl.agents.trmrl import TrMRLAgent, TrMRLConfig, WorkingMemoryEncoder, window_attention
from trmrl.ppo import JointLoss, PPOConfig, UpdatePhase, gae, gaussian_log_prob, ppo_update
from trmrl.sampling import TrialSampler

TINY = dict(layers=2, heads=2, d_model=16, d_ff=32, wm_size=4, trials_per_update=4,
            minibatch_size=16, epochs=2)


def tiny_trmrl(suite, seed=0, **overrides):
    config = cfg.build(TrMRLConfig, {**TINY, **overrides})
    return TrMRLAgent(config, suite, torch.device("cpu"), seed)


# -- encoder --------------------------------------------------------------------------------
def test_encoder_is_causal_and_shaped():
    torch.manual_seed(0)
    config = TrMRLConfig(layers=3, heads=4, d_model=32, d_ff=64, wm_size=6)
    encoder = WorkingMemoryEncoder(in_dim=7, config=config)
    windows = torch.randn(5, 6, 7)
    filled = torch.ones(5, 6, dtype=torch.bool)
    out = encoder.encode_all(windows, filled)
    assert out.shape == (5, 6, 32) and encoder(windows, filled).shape == (5, 32)
    changed = windows.clone()
    changed[:, 3] += 1.0  # perturb slot 3: slots 0-2 must not see it
    out2 = encoder.encode_all(changed, filled)
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    assert not torch.allclose(out[:, 3:], out2[:, 3:])


def test_window_attention_equals_torch_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(6, 5, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.ones(5, 5).tril().bool() & (torch.rand(6, 1, 5) > 0.4) | torch.eye(5, dtype=torch.bool)
    ours = window_attention(q, k, v, mask)
    heads_first = [x.transpose(1, 2) for x in (q, k, v)]
    reference = F.scaled_dot_product_attention(*heads_first, attn_mask=mask[:, None]).transpose(1, 2)
    torch.testing.assert_close(ours, reference)
    grads = torch.autograd.grad(ours.square().sum(), (q, k, v))
    torch.testing.assert_close(grads, torch.autograd.grad(reference.square().sum(), (q, k, v)))


@pytest.mark.parametrize("layernorm", [False, True])
def test_last_slot_only_equals_the_full_encoding(layernorm):
    torch.manual_seed(0)
    encoder = WorkingMemoryEncoder(7, TrMRLConfig(layers=3, heads=4, d_model=32, d_ff=64,
                                                  wm_size=5, layernorm=layernorm)).double()
    windows = torch.randn(9, 5, 7, dtype=torch.float64)
    filled = torch.rand(9, 5) > 0.3
    filled[:, -1] = True
    torch.testing.assert_close(encoder(windows, filled), encoder.encode_all(windows, filled)[:, -1])


def test_empty_slots_are_ignored_and_never_nan():
    encoder = WorkingMemoryEncoder(7, TrMRLConfig(layers=2, heads=2, d_model=16, d_ff=32, wm_size=5))
    windows = torch.randn(3, 5, 7)
    filled = torch.tensor([[False] * 4 + [True]] * 3)
    garbage = windows.clone()
    garbage[:, :4] = 1e3  # content of empty slots must not matter
    a, b = encoder(windows, filled), encoder(garbage, filled)
    assert torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_tfixup_scales():
    N, d = 4, 128
    config = TrMRLConfig(layers=N, heads=16, d_model=d, d_ff=512, wm_size=5)
    torch.manual_seed(0)
    encoder = WorkingMemoryEncoder(in_dim=300, config=config)
    scale = 0.67 * N ** -0.25

    def xavier_std(weight):
        fan_out, fan_in = weight.shape
        return math.sqrt(2.0 / (fan_in + fan_out))

    embed_std = encoder.embed.weight.std().item()
    assert embed_std == pytest.approx(d ** -0.5 * (9 * N) ** -0.25, rel=0.05)
    layer = encoder.layers[0]
    for linear in (layer.out_proj, layer.ff1, layer.ff2):
        assert linear.weight.std().item() == pytest.approx(xavier_std(linear.weight) * scale, rel=0.05)
    in_proj = layer.in_proj.weight
    assert in_proj.std().item() == pytest.approx(xavier_std(in_proj) * scale * math.sqrt(2), rel=0.05)
    assert all((lin.bias == 0).all() for lin in (layer.in_proj, layer.out_proj, layer.ff1, layer.ff2))
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in encoder.modules())
    with_norm = WorkingMemoryEncoder(300, TrMRLConfig(layernorm=True))
    assert sum(isinstance(m, torch.nn.LayerNorm) for m in with_norm.modules()) == 2 * 4


def test_tfixup_off_uses_default_init():
    torch.manual_seed(0)
    on = WorkingMemoryEncoder(30, TrMRLConfig(tfixup=True))
    torch.manual_seed(0)
    off = WorkingMemoryEncoder(30, TrMRLConfig(tfixup=False))
    assert off.layers[0].ff1.weight.std() > 1.5 * on.layers[0].ff1.weight.std()


# -- windows while acting vs. for learning -------------------------------------------------------
@pytest.mark.parametrize("crosses", [False, True])
def test_window_respects_episode_boundaries(crosses):
    suite = ToySuite()  # horizon 5, 3 episodes
    agent = tiny_trmrl(suite, window_crosses_episodes=crosses)
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(agent, suite.tasks("test", 0, 2))
    inputs = agent.batch_inputs(batch)
    windows, filled = inputs["windows"], inputs["filled"]
    W, H = agent.config.wm_size, suite.horizon
    assert windows.shape == (2, 15, W, agent.in_dim)
    # step 6 is the second step of episode 1
    expected = [False, False, True, True] if not crosses else [True, True, True, True]
    assert filled[0, 6].tolist() == expected
    assert filled[0, 0].tolist() == [False, False, False, True]  # trial start
    # the current step is always the last slot
    torch.testing.assert_close(windows[:, :, -1], torch.from_numpy(batch.augmented_inputs()))


@pytest.mark.parametrize("make", [
    lambda s: tiny_trmrl(s),
    lambda s: tiny_trmrl(s, window_crosses_episodes=True, shared_encoder=False),
    lambda s: MemorylessAgent(cfg.build(ReferenceConfig, {}), s, torch.device("cpu"), 0),
    lambda s: OracleAgent(cfg.build(ReferenceConfig, {}), s, torch.device("cpu"), 0),
], ids=["trmrl", "trmrl-crossing-separate-value", "memoryless", "oracle"])
def test_acting_and_learning_see_the_same_inputs(make):
    """log-probs and values recomputed from the batch equal those recorded while acting; so
    do the values an agent with ``values_from_batch`` computes before its update."""
    suite = ToySuite(fall_at=4)  # early terminations exercise the padding too
    agent = make(suite)
    from_batch = agent.values_from_batch
    if from_batch:
        with TrialSampler(suite, num_envs=3) as sampler:
            assert "value" not in sampler.run(agent, suite.tasks("test", 0, 3)).extras
        agent.values_from_batch = False  # record them while acting, to compare
    with TrialSampler(suite, num_envs=3) as sampler:
        batch = sampler.run(agent, suite.tasks("test", 0, 3))
    valid = torch.from_numpy(batch.valid)
    inputs = {k: v[valid] for k, v in agent.batch_inputs(batch).items()}
    if from_batch:
        values = agent.batch_values(inputs, batch.valid, chunk=5)  # several chunks
        np.testing.assert_allclose(values, batch.extras["value"], rtol=1e-5, atol=1e-6)
        assert (values[~batch.valid] == 0).all()
    with torch.no_grad():
        mean, value, *_ = agent.model(inputs)
        logp = gaussian_log_prob(mean, agent.model.log_std.expand_as(mean),
                                 torch.from_numpy(batch.action)[valid])
    torch.testing.assert_close(logp, torch.from_numpy(batch.extras["logp"])[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, torch.from_numpy(batch.extras["value"])[valid], atol=1e-5, rtol=1e-5)


def test_future_steps_do_not_leak_into_training_windows():
    suite = ToySuite()
    agent = tiny_trmrl(suite)
    with TrialSampler(suite, num_envs=1) as sampler:
        batch = sampler.run(agent, suite.tasks("test", 0, 1))
    before = agent.batch_inputs(batch)["windows"][0, :8].clone()
    batch.obs[0, 8:] += 100.0
    batch.reward[0, 8:] += 100.0
    torch.testing.assert_close(agent.batch_inputs(batch)["windows"][0, :8], before)


# -- PPO --------------------------------------------------------------------------------------
def test_gae_on_a_known_trial():
    rewards = np.array([[1.0, 0.0, 2.0, 0.0]])
    values = np.array([[0.5, 0.2, 1.0, 9.0]])
    valid = np.array([[True, True, True, False]])
    gamma, lam = 0.9, 0.8
    d2 = 2.0 - 1.0  # last valid step: next value 0
    d1 = 0.0 + gamma * 1.0 - 0.2
    d0 = 1.0 + gamma * 0.2 - 0.5
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    adv, ret = gae(rewards, values, valid, gamma, lam)
    np.testing.assert_allclose(adv, [[a0, a1, a2, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret[valid], (adv + values)[valid], rtol=1e-6)


def joint_phase(evaluate, optimizer, param, config):
    return [UpdatePhase(JointLoss(evaluate, config), optimizer, [param])]


def test_clipped_surrogate_on_a_known_batch():
    param = torch.nn.Parameter(torch.zeros(()))
    optimizer = torch.optim.SGD([param], lr=0.0)
    samples = {"logp": torch.zeros(2), "advantage": torch.tensor([1.0, -1.0]),
               "return": torch.tensor([1.0, 3.0])}

    def evaluate(minibatch):  # ratio 1.5 everywhere, value 0
        n = len(minibatch["logp"])
        return torch.full((n,), math.log(1.5)) + 0 * param, torch.zeros(n), torch.zeros(n) + 0 * param

    config = PPOConfig(epochs=1, minibatch_size=2, clip=0.2)
    stats = ppo_update(joint_phase(evaluate, optimizer, param, config), samples, config,
                       torch.Generator().manual_seed(0))
    # adv +1: min(1.5, 1.2) = 1.2; adv -1: min(-1.5, -1.2) = -1.5; loss = -mean = 0.15
    assert stats["policy_loss"] == pytest.approx(0.15)
    assert stats["value_loss"] == pytest.approx(0.5 * (1 + 9) / 2)
    assert stats["clip_fraction"] == pytest.approx(1.0)


def test_far_off_policy_ratio_stays_finite():
    """A log-ratio of 200 (tiny std, moved mean) would overflow exp() to inf and the
    loss to NaN; the cap keeps the loss finite and the gradient of a negative advantage."""
    param = torch.nn.Parameter(torch.zeros(()))
    samples = {"logp": torch.zeros(2), "advantage": torch.tensor([1.0, -1.0]), "return": torch.zeros(2)}

    def evaluate(minibatch):
        n = len(minibatch["logp"])
        return torch.full((n,), 200.0) + param, torch.zeros(n), torch.zeros(n) + 0 * param

    config = PPOConfig(epochs=1, minibatch_size=2)
    stats = ppo_update(joint_phase(evaluate, torch.optim.SGD([param], lr=0.0), param, config),
                       samples, config, torch.Generator())
    assert math.isfinite(stats["loss"]) and stats["policy_loss"] > 0


@pytest.mark.parametrize("target_kl, steps", [(0.0, 6), (0.05, 2)])
def test_target_kl_ends_the_iteration_early(target_kl, steps):
    """The first step sees the old policy (KL 0) and moves it far (log-ratio 4), so the
    second step's KL exceeds 1.5 x target and the updates stop there (6 planned)."""
    param = torch.nn.Parameter(torch.zeros(()))
    samples = {"logp": torch.zeros(4), "advantage": torch.ones(4), "return": torch.zeros(4)}
    optimizer = torch.optim.SGD([param], lr=1.0)

    def evaluate(minibatch):  # first step: d(loss)/d(param) = -2, so param becomes 2
        n = len(minibatch["logp"])
        return 2 * param.expand(n), torch.zeros(n), torch.zeros(n) + 0 * param

    config = PPOConfig(epochs=3, minibatch_size=2, clip=10.0, target_kl=target_kl)
    stats = ppo_update(joint_phase(evaluate, optimizer, param, config), samples, config,
                       torch.Generator().manual_seed(0))
    assert stats["minibatch_steps"] == steps


def test_non_finite_loss_raises():
    param = torch.nn.Parameter(torch.zeros(()))
    samples = {"logp": torch.zeros(2), "advantage": torch.ones(2), "return": torch.zeros(2)}

    def evaluate(minibatch):
        n = len(minibatch["logp"])
        return torch.full((n,), float("nan")) + param, torch.zeros(n), torch.zeros(n)

    with pytest.raises(FloatingPointError):
        config = PPOConfig(epochs=1, minibatch_size=2)
        ppo_update(joint_phase(evaluate, torch.optim.SGD([param], lr=0.1), param, config),
                   samples, config, torch.Generator())


def test_torch_compile_is_for_the_gpu_graphs_only():
    agent = tiny_trmrl(ToySuite())
    assert agent.settings.torch_compile and not agent.compiled  # on a CPU: eager
    assert agent.model._compiled_call_impl is None


@pytest.mark.parametrize("triton, compiler, compiled", [
    (True, "/usr/bin/cc", True), (False, "/usr/bin/cc", False), (True, None, False)])
def test_compile_model_needs_triton_and_a_c_compiler(monkeypatch, caplog, triton, compiler, compiled):
    import torch.utils._triton
    from trmrl.agents.ppo_agent import compile_model
    monkeypatch.setattr(torch.utils._triton, "has_triton", lambda: triton)
    monkeypatch.setattr("shutil.which", lambda name: compiler)
    model = torch.nn.Linear(2, 2)
    assert compile_model(model) == compiled
    assert (model._compiled_call_impl is not None) == compiled
    assert ("runs uncompiled" in caplog.text) != compiled


def test_config_rejects_bad_values():
    with pytest.raises(cfg.ConfigError, match="divisible"):
        cfg.build(TrMRLConfig, {"d_model": 30, "heads": 4})
    with pytest.raises(cfg.ConfigError, match="unknown .* key 'layer'"):
        cfg.build(TrMRLConfig, {"layer": 2})
    with pytest.raises(cfg.ConfigError, match="'tfixup' must be bool"):
        cfg.build(TrMRLConfig, {"tfixup": "maybe"})
    with pytest.raises(cfg.ConfigError, match="'lr_policy' must be float, got 'fast'"):
        cfg.build(TrMRLConfig, cfg.parse_overrides(["lr_policy=fast"]))


def test_set_accepts_numbers_without_a_dot():
    """YAML 1.1 reads 3e-5 and 2e7 as strings; --set must still take them as numbers."""
    settings, config = cfg.build_run(TrMRLAgent, cfg.parse_overrides(["lr_policy=3e-5", "steps=2e7",
                                                                      "clip=1"]))
    assert (config.lr_policy, settings.steps, config.clip) == (3e-5, 20_000_000, 1.0)
    assert isinstance(settings.steps, int) and isinstance(config.clip, float)


# -- learning ---------------------------------------------------------------------------------
def test_tiny_training_run_improves_a_learnable_task():
    """A fixed target action: the return must rise from the initial policy's."""
    suite = ToySuite()
    target = [suite._task("train", 0, 0.6)] * 8
    agent = tiny_trmrl(suite, seed=1, lr_policy=3e-3, lr_value=3e-3, init_std=0.5,
                       trials_per_update=8, minibatch_size=32, epochs=4, gamma=0.5)
    returns = []
    with TrialSampler(suite, num_envs=8, seed=1) as sampler:
        for _ in range(40):
            returns.append(agent.train_iteration(sampler, target).episode_return.mean())
    assert np.mean(returns[:3]) < -1.0  # about 5 * (0.6^2 + 0.25) per episode
    assert np.mean(returns[-3:]) > 0.5 * np.mean(returns[:3])


def test_running_normalizer_matches_batch_moments():
    from trmrl.nn import RunningNormalizer
    rng = np.random.default_rng(0)
    data = rng.normal(5.0, 3.0, size=(1000, 4))
    norm = RunningNormalizer(4)
    for chunk in np.array_split(data, 7):
        norm.update(torch.from_numpy(chunk))
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(0), rtol=1e-10)
    np.testing.assert_allclose(norm.var.numpy(), data.var(0), rtol=1e-10)
    scaled = norm(torch.from_numpy(data).float())
    assert abs(scaled.mean().item()) < 1e-3 and abs(scaled.std().item() - 1) < 1e-2
