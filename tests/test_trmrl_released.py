"""TrMRL defaults v4 against the released code (luckeciano/transformers-metarl): the launch
commands row by row, the lr schedule, the value function, the two optimisers, the output
init and the working memory; and a v4 run that resumes bit for bit."""

import math

import numpy as np
import pytest
import torch
import yaml

from test_train import rows, sigkill_after_progress, train_args
from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.agents.trmrl import TrMRLAgent, TrMRLConfig
from trmrl.cli import main
from trmrl.ppo import decay_factor, discounted_returns
from trmrl.sampling import TrialSampler
from trmrl.train import build_agent, resolve

# The released README's launch commands (facts of that repository), flag -> value; flags the
# commands leave out take the example script's default, written here where it matters.
RELEASED = {
    "cheetah-vel": dict(n_heads=16, d_model=128, layers=4, wm_size=5, dim_ff=512, meta_batch_size=20,
                        episode_per_task=2, discount=0.9, gae_lambda=0.8, lr_clip_range=0.1,
                        policy_lr=3e-5, vf_lr=2.5e-4, minibatch_size=256, max_opt_epochs=10,
                        policy_ent_coeff=0.0, init_std=0.2, n_epochs=2500,
                        policy_lr_schedule="decay", vf_lr_schedule="no_schedule",
                        decay_epoch_init=100, decay_epoch_end=750, min_lr_factor=0.1,
                        share_network=False, output_weights_scale=1.0, max_episode_length=200),
    "cheetah-dir": dict(n_heads=16, d_model=128, layers=4, wm_size=5, dim_ff=512, meta_batch_size=20,
                        episode_per_task=2, discount=0.9, gae_lambda=0.8, lr_clip_range=0.2,
                        policy_lr=3e-5, vf_lr=3e-5, minibatch_size=256, max_opt_epochs=10,
                        policy_ent_coeff=0.0, init_std=0.5, n_epochs=5000,
                        policy_lr_schedule="decay", vf_lr_schedule="decay",
                        decay_epoch_init=100, decay_epoch_end=3700, min_lr_factor=1e-4,
                        share_network=True, output_weights_scale=1.0, max_episode_length=200),
    "ant-dir": dict(n_heads=16, d_model=128, layers=4, wm_size=5, dim_ff=512, meta_batch_size=20,
                    episode_per_task=2, discount=0.92, gae_lambda=0.8, lr_clip_range=0.2,
                    policy_lr=3e-5, vf_lr=3e-5, minibatch_size=256, max_opt_epochs=10,
                    policy_ent_coeff=0.0, init_std=0.5, n_epochs=5000,
                    policy_lr_schedule="decay", vf_lr_schedule="decay",
                    decay_epoch_init=500, decay_epoch_end=3500, min_lr_factor=1e-4,
                    share_network=True, output_weights_scale=0.01, max_episode_length=200),
}
METAWORLD = dict(n_heads=4, d_model=32, layers=4, wm_size=5, dim_ff=128, meta_batch_size=25,
                 episode_per_task=10, discount=0.9, gae_lambda=0.95, lr_clip_range=0.2,
                 policy_lr=5e-5, vf_lr=5e-5, minibatch_size=32, max_opt_epochs=10,
                 policy_ent_coeff=0.0, init_std=1.0, policy_lr_schedule="no_schedule",
                 vf_lr_schedule="no_schedule", share_network=False, output_weights_scale=0.01,
                 max_episode_length=500)
RELEASED.update({env: METAWORLD for env in ("ml1-reach", "ml1-push", "ml1-pick-place", "ml10", "ml45")})
SCHEDULES = {"decay": "decay", "no_schedule": "constant"}


def ours(flag, value):
    """A released flag's value as our key and value (None: checked elsewhere)."""
    table = {"n_heads": "heads", "d_model": "d_model", "layers": "layers", "wm_size": "wm_size",
             "dim_ff": "d_ff", "meta_batch_size": "trials_per_update", "discount": "gamma",
             "gae_lambda": "gae_lambda", "lr_clip_range": "clip", "policy_lr": "lr_policy",
             "vf_lr": "lr_value", "minibatch_size": "minibatch_size", "max_opt_epochs": "epochs",
             "policy_ent_coeff": "entropy_coef", "init_std": "init_std",
             "decay_epoch_init": "lr_decay_start", "decay_epoch_end": "lr_decay_end",
             "min_lr_factor": "lr_min_factor", "share_network": "shared_encoder",
             "output_weights_scale": "policy_output_gain"}
    if flag in ("policy_lr_schedule", "vf_lr_schedule"):
        return ("lr_schedule_policy" if flag.startswith("policy") else "lr_schedule_value",
                SCHEDULES[value])
    return (table[flag], value) if flag in table else None


@pytest.mark.parametrize("env", sorted(RELEASED))
def test_v4_defaults_are_the_launch_commands(env):
    spec = resolve("trmrl", env, 0)
    hp = cfg.flatten(spec.settings, spec.hyperparameters)  # the flat keys, as --set names them
    flags = RELEASED[env]
    for flag, value in flags.items():
        pair = ours(flag, value)
        if pair is not None:
            key, expected = pair
            if hp["lr_schedule_policy"] == hp["lr_schedule_value"] == "constant" and key.startswith(
                    ("lr_decay", "lr_min")):
                continue  # the decay window of a constant schedule is never read
            assert hp[key] == pytest.approx(expected), (env, flag, key)
    suite = build_agent(resolve("trmrl", env, 0, device="cpu")).suite if env.startswith("ch") else None
    if suite is not None:  # an iteration is meta_batch_size x episode_per_task x horizon steps
        assert (suite.episodes_per_trial, suite.horizon) == (flags["episode_per_task"],
                                                              flags["max_episode_length"])
    if "n_epochs" in flags:  # the budget: n_epochs iterations of that many steps
        per_iteration = flags["meta_batch_size"] * flags["episode_per_task"] * flags["max_episode_length"]
        assert hp["steps"] == flags["n_epochs"] * per_iteration
    # what every launch command shares: the released algorithm's form
    assert hp["update_order"] == "policy_then_value" and hp["weight_decay"] == 0.01
    assert hp["value_loss"] == "gaussian_nll" and hp["value_target"] == "discounted_return"
    assert hp["max_grad_norm"] == 0 and hp["target_kl"] == 0 and not hp["center_advantages"]
    assert hp["tfixup"] and not hp["layernorm"] and hp["hidden"] == [64, 64]
    assert not hp["separate_value_encoder"] and hp["min_std"] == 1e-6
    assert hp["episode_start_memory"] == "reset" and hp["window_positions"] == "from_episode_start"
    assert hp["ff_bias_init"] == "torch" and not hp["window_crosses_episodes"]


def test_stabilised_preset_changes_only_its_keys():
    def flat(spec):
        return cfg.flatten(spec.settings, spec.hyperparameters)

    released = flat(resolve("trmrl", "cheetah-vel", 0))
    stabilised = flat(resolve("trmrl", "cheetah-vel", 0, overrides={"preset": "stabilised"}))
    changed = {k for k in released if released[k] != stabilised[k]}
    assert changed == {"preset", "max_grad_norm", "target_kl", "update_order", "value_loss",
                       "value_target", "separate_value_encoder", "weight_decay"}
    # a --set beside the preset wins over it
    mixed = resolve("trmrl", "cheetah-vel", 0, overrides={"preset": "stabilised", "target_kl": 0.05})
    assert mixed.hyperparameters.target_kl == 0.05


# -- the lr schedule -------------------------------------------------------------------------
def test_decay_schedule_equals_a_torch_multisteplr():
    """The released LRDecayOptimizerWrapper is a MultiStepLR with milestones every
    steps_per_epoch minibatch steps; stepping one (torch's chained form, a different code
    path: its lr is multiplied at each milestone) gives the same lrs up to float rounding."""
    config = TrMRLConfig(lr_schedule_policy="decay", lr_decay_start=3, lr_decay_end=9,
                         lr_min_factor=0.1)
    steps_per_epoch = 7
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    milestones = list(range(3 * steps_per_epoch, 9 * steps_per_epoch, steps_per_epoch))
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones,
                                                     gamma=0.1 ** (1 / len(milestones)))
    for step in range(12 * steps_per_epoch):
        # float64 products vs powers: equal to ~1e-15 relative
        assert decay_factor(step, steps_per_epoch, config) == pytest.approx(
            optimizer.param_groups[0]["lr"], rel=1e-12), step
        optimizer.step()
        scheduler.step()


def test_cheetah_vel_policy_lr_at_given_iterations():
    """cheetah-vel: an epoch is 10 x 8,000 // 256 = 312 minibatch steps while an iteration
    takes 10 x 32 = 320, so the 650 milestones fall from iteration 97.5 to 730.3."""
    spec = resolve("trmrl", "cheetah-vel", 0, device="cpu")
    agent = build_agent(spec)
    policy, value = agent.phases
    assert policy.steps_per_epoch == value.steps_per_epoch == 312
    milestones_passed = {0: 0, 97: 0, 98: 1, 400: 311, 730: 649, 731: 650, 2499: 650}
    for iteration, passed in milestones_passed.items():
        step = iteration * 320  # the iteration's first minibatch step
        assert decay_factor(step, 312, spec.hyperparameters) == pytest.approx(
            0.1 ** (passed / 650), rel=1e-12), iteration
    assert policy.optimizer.param_groups[0]["schedule"] == "decay"
    assert value.optimizer.param_groups[0]["schedule"] == "constant"


# -- the value function and the two optimisers ------------------------------------------------
def released_agent(suite=None, **overrides):
    """A tiny TrMRL with cheetah-vel's v4 defaults (sizes and budgets made small)."""
    values, _ = cfg.env_defaults("trmrl", "cheetah-vel")
    values.update(layers=2, heads=2, d_model=16, d_ff=32, wm_size=4, trials_per_update=4,
                  minibatch_size=16, epochs=2, steps=10_000)
    values.update(overrides)
    settings, config = cfg.build_run(TrMRLAgent, values)
    return TrMRLAgent(config, suite or ToySuite(fall_at=4), torch.device("cpu"), 0, settings=settings)


def test_unshared_value_reads_the_current_working_memory_only():
    agent = released_agent()
    assert agent.model.value_encoder is None
    assert agent.model.value[0].in_features == agent.in_dim
    windows = torch.randn(6, 4, agent.in_dim)
    filled = torch.ones(6, 4, dtype=torch.bool)
    earlier = windows.clone()
    earlier[:, :-1] += 1.0  # older working memories change: the policy sees it, the value not
    inputs, changed = {"windows": windows, "filled": filled}, {"windows": earlier, "filled": filled}
    with torch.no_grad():
        torch.testing.assert_close(agent.model.values(inputs), agent.model.values(changed))
        assert not torch.allclose(agent.model(inputs)[0], agent.model(changed)[0])


def test_gaussian_value_loss_is_the_negative_log_likelihood():
    """The value phase's loss on a known minibatch equals torch.distributions' NLL."""
    agent = released_agent()
    with torch.no_grad():
        agent.model.value_log_std.fill_(math.log(2.0))
    minibatch = {"input_windows": torch.randn(5, 4, agent.in_dim),
                 "input_filled": torch.ones(5, 4, dtype=torch.bool),
                 "return": torch.randn(5), "logp": torch.zeros(5)}
    value_phase = agent.phases[1]
    loss, stats = value_phase.loss(minibatch, torch.ones(5))
    with torch.no_grad():
        mean = agent.model.values({"windows": minibatch["input_windows"],
                                   "filled": minibatch["input_filled"]})
    nll = -torch.distributions.Normal(mean, 2.0).log_prob(minibatch["return"]).mean()
    torch.testing.assert_close(loss.detach(), nll, rtol=1e-6, atol=1e-6)  # float32, two formulas
    assert stats[2] == loss.detach() and stats[1] == 0


def test_value_targets_are_discounted_returns():
    rewards = np.array([[1.0, 2.0, 3.0, 9.0]], np.float32)
    valid = np.array([[True, True, True, False]])
    expected = [[1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0, 0.0]]
    np.testing.assert_allclose(discounted_returns(rewards, valid, 0.5), expected, rtol=1e-6)


def parameter_ids(optimizer):
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def test_two_optimisers_disjoint_where_not_shared():
    agent = released_agent()
    policy, value = (parameter_ids(phase.optimizer) for phase in agent.phases)
    assert not policy & value
    assert policy | value == {id(p) for p in agent.model.parameters()}
    assert id(agent.model.value_log_std) in value and id(agent.model.log_std) in policy
    for phase in agent.phases:
        assert isinstance(phase.optimizer, torch.optim.AdamW)
        assert phase.optimizer.param_groups[0]["weight_decay"] == 0.01


def test_shared_value_optimiser_holds_the_policy_and_decays_it():
    """With a shared encoder the released value optimiser holds the whole policy (its value
    function's base model). torch 1.7's zero_grad zeroed gradients in place, so its AdamW
    still stepped the policy head, which the value loss does not reach: weight decay alone
    (Adam's step is 0 with zero moments). With lr_policy 0 the policy head shrinks by
    (1 - lr_value x 0.01) per value step and by nothing else."""
    agent = released_agent(shared_encoder=True, lr_policy=1e-12, lr_value=0.1,
                           lr_schedule_policy="constant", lr_schedule_value="constant")
    policy, value = (parameter_ids(phase.optimizer) for phase in agent.phases)
    assert policy < value
    head = agent.model.policy[-1].weight
    before = head.detach().clone()
    suite = agent.suite
    with TrialSampler(suite, num_envs=4) as sampler:
        batch = sampler.run(agent, suite.tasks("train", 0, 4))
    stats = agent.update(batch)
    value_steps = agent.phases[1].steps
    assert value_steps == stats["minibatch_steps"] / 2
    # float32 products over the steps vs one float64 power: ~1e-6 relative
    torch.testing.assert_close(head.detach(), before * (1 - 0.1 * 0.01) ** value_steps,
                               rtol=2e-5, atol=1e-7)


# -- output init and the working memory -------------------------------------------------------
@pytest.mark.parametrize("env, gain", [("cheetah-vel", 1.0), ("ant-dir", 0.01), ("ml1-reach", 0.01)])
def test_policy_output_gain(env, gain):
    config = resolve("trmrl", env, 0).hyperparameters
    assert config.policy_output_gain == gain
    out = released_agent(policy_output_gain=gain).model.policy[-1].weight
    fan_out, fan_in = out.shape
    bound = gain * math.sqrt(6 / (fan_in + fan_out))  # Xavier-uniform's bound
    assert out.abs().max() <= bound and out.abs().max() > 0.5 * bound


def test_ff_biases_start_as_torch_and_equal_in_every_layer():
    encoder = released_agent(layers=3).model.policy_encoder
    first = encoder.layers[0].ff1.bias
    assert first.abs().max() > 0 and first.abs().max() <= encoder.layers[0].ff1.in_features ** -0.5
    for layer in encoder.layers[1:]:
        assert torch.equal(layer.ff1.bias, first) and torch.equal(layer.ff2.bias, encoder.layers[0].ff2.bias)
    assert all((layer.in_proj.bias == 0).all() and (layer.out_proj.bias == 0).all()
               for layer in encoder.layers)


def test_every_episode_starts_from_zero_action_reward_and_flag():
    suite = ToySuite()  # horizon 5, 3 episodes per trial
    agent = released_agent(suite)
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(agent, suite.tasks("test", 0, 2))
    windows = agent.batch_inputs(batch)["windows"]
    current = windows[:, :, -1]  # [N, T, D]: the current step's working memory
    obs_dim, act_dim = suite.observation_dim, suite.action_dim
    starts = torch.from_numpy(batch.episode_start)
    assert starts[0].nonzero().flatten().tolist() == [0, 5, 10]
    assert (current[starts][:, obs_dim:] == 0).all()  # a_{t-1}, r_{t-1}, d_t at every start
    assert (current[:, :, -1] == 0).all()  # the flag the released policy sees is always 0
    later = current[~starts]
    assert (later[:, obs_dim:obs_dim + act_dim] != 0).any()  # a_{t-1} inside an episode


def test_positions_count_from_the_episode_start():
    """An episode's t-th step (t < window) sits at position t, as in the released window
    that fills from its first slot: the same encoder output as a window holding the same
    memories at the front with empty slots after them, all positions as stored."""
    torch.manual_seed(0)
    agent = released_agent()
    encoder = agent.model.policy_encoder
    W, D = agent.config.wm_size, agent.in_dim
    memories = torch.randn(3, 2, D)  # two filled slots
    ours = torch.zeros(3, W, D)
    ours[:, -2:] = memories
    filled = torch.zeros(3, W, dtype=torch.bool)
    filled[:, -2:] = True
    front = torch.zeros(3, W, D)
    front[:, :2] = memories
    encoder.positions_from_start = False
    with torch.no_grad():
        released = encoder.encode_all(front, torch.ones(3, W, dtype=torch.bool))[:, 1]  # causal
        encoder.positions_from_start = True
        torch.testing.assert_close(encoder(ours, filled), released, rtol=1e-5, atol=1e-6)


def test_acting_and_learning_agree_under_v4():
    """The PPO ratio is 1 before the first step: acting's log-probs and values equal those
    recomputed from the batch with v4's working memory and positions."""
    agent = released_agent(trials_per_update=3)
    agent.values_from_batch = False  # record values while acting, to compare
    suite = agent.suite
    with TrialSampler(suite, num_envs=3) as sampler:
        batch = sampler.run(agent, suite.tasks("test", 0, 3))
    valid = torch.from_numpy(batch.valid)
    inputs = {k: v[valid] for k, v in agent.batch_inputs(batch).items()}
    with torch.no_grad():
        value = agent.model(inputs).value
        logp = agent.evaluate_policy({"action": torch.from_numpy(batch.action)[valid],
                                      **{"input_" + k: v for k, v in inputs.items()}})[0]
    # batch rows vs one row at a time: float32 rounding
    torch.testing.assert_close(logp, torch.from_numpy(batch.extras["logp"])[valid], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(value, torch.from_numpy(batch.extras["value"])[valid], atol=1e-5, rtol=1e-5)


# -- a tiny v4 run resumes bit for bit ------------------------------------------------------------
def test_v4_run_with_a_decaying_lr_resumes_bit_identically(tmp_path):
    """The schedule's clock (minibatch steps per optimiser) and both optimisers' states are in
    the checkpoint: a run killed mid-decay resumes to the uninterrupted run's rows."""
    extra = ["lr_decay_start=1", "lr_decay_end=5", "lr_schedule_value=decay"]
    reference = tmp_path / "reference"
    assert main(train_args(reference, steps=960, extra=extra)) == 0
    config = yaml.safe_load((reference / "config.yaml").read_text())
    assert config["defaults_version"] == 4
    assert config["hyperparameters"]["update_order"] == "policy_then_value"
    killed = tmp_path / "killed"
    sigkill_after_progress(train_args(killed, steps=960, extra=extra), killed, lines=12)
    assert 12 < len(rows(killed / "progress.csv")) < len(rows(reference / "progress.csv"))
    assert main(train_args(killed, steps=960, extra=extra)) == 0
    assert rows(killed / "progress.csv") == rows(reference / "progress.csv")
    strip = lambda table: [r[:2] + r[3:] for r in table]  # noqa: E731  (wall_s is column 2)
    metrics = rows(reference / "metrics.csv", False)
    assert strip(rows(killed / "metrics.csv", False)) == strip(metrics)
    lrs = [float(r[metrics[0].index("lr_policy")]) for r in metrics[1:]]
    assert lrs[0] > lrs[-1] == pytest.approx(3e-5 * 0.1)  # the decay ran, to its floor
