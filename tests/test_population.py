"""Populations (trmrl/population.py): K members acting and learning at once equal each
member acting and learning alone, up to float rounding; a diverging member stops alone;
a member's checkpoint is an ordinary agent's."""

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toy_suite import ToyEnv, ToySuite
from trmrl import config as cfg
from trmrl.agents.reference import MemorylessAgent, OracleAgent
from trmrl.agents.trmrl import TrMRLAgent
from trmrl.errors import ConfigError
from trmrl.population import (Population, StackedAdamW, population_support, scheduled_minibatches,
                              split_batch)
from trmrl.ppo import minibatch_indices
from trmrl.sampling import StepInput, TrialSampler

sys.path.insert(0, str(Path(__file__).parents[1] / "examples" / "my_agent"))
from my_agent import WorkingMemoryAgent  # noqa: E402

# tiny sizes: 4 trials of 2 episodes x 20 steps = 160 samples, 10 minibatches an epoch
SIZES = dict(trials_per_update=4, horizon=20, episodes_per_trial=2, minibatch_size=16, epochs=2,
             steps=10_000)
TRMRL = dict(layers=1, heads=2, d_model=16, d_ff=32, wm_size=4)
# the stabilised preset's keys, with constant lrs that lr_decay shrinks after each iteration
STABILISED = dict(preset="stabilised", max_grad_norm=0.5, target_kl=0.005, update_order="joint",
                  value_loss="mse", value_target="lambda_return", separate_value_encoder=True,
                  weight_decay=0.0, lr_schedule_policy="constant", lr_schedule_value="constant",
                  lr_decay=0.9, lr_policy=1e-4, lr_value=1e-4)
# v4 (released) with a shared encoder, whose value AdamW holds the policy, and an lr that
# decays within an iteration (an "epoch" of the schedule is 20 minibatch steps here)
V4 = dict(shared_encoder=True, lr_decay_start=0, lr_decay_end=3, lr_min_factor=0.1,
          lr_policy=1e-3, lr_value=1e-3)


def trmrl(seed, suite=None, **overrides):
    values, _ = cfg.env_defaults("trmrl", "cheetah-dir")  # defaults v4
    values.update(SIZES, **TRMRL)
    values.update(overrides)
    settings, config = cfg.build_run(TrMRLAgent, values)  # steps is a trainer setting
    return TrMRLAgent(config, suite or ToySuite(), torch.device("cpu"), seed, settings=settings)


def oracle(seed, suite=None, **overrides):
    settings, config = cfg.build_run(OracleAgent, {**SIZES, "hidden": [16, 16], **overrides})
    return OracleAgent(config, suite or ToySuite(), torch.device("cpu"), seed, settings=settings)


def working_memory(seed, suite=None, **overrides):
    settings, config = cfg.build_run(WorkingMemoryAgent, {**SIZES, "hidden": [16, 16], **overrides})
    return WorkingMemoryAgent(config, suite or ToySuite(), torch.device("cpu"), seed,
                              settings=settings)


def collect(agent, suite, trials=4, fall_at=None):
    """A batch of ``trials`` trials acted by ``agent`` alone."""
    with TrialSampler(suite, num_envs=trials, horizon=20, episodes_per_trial=2) as sampler:
        agent.model.eval()
        batch = sampler.run(agent, suite.tasks("train", agent.seed, trials))
        agent.model.train()
    return batch


class QuietToySuite(ToySuite):
    """ToySuite whose resets do not depend on the seed: a trial's data depends only on its
    task and its agent, wherever the sampler puts it."""

    def make_env(self, task=None):
        env = QuietToyEnv(self.fall_at)
        if task is not None:
            env.set_task(task)
        return env


class QuietToyEnv(ToyEnv):
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2), {}


# -- comparing states: the population's member against the same member updated alone ------------
def key_bias(model):
    """The in_proj bias of the keys in every encoder layer: softmax is invariant to it, so
    its exact gradient is 0 and AdamW normalises rounding noise (~1e-10) into steps of ~lr
    whose sign the summation order decides. Compared on its own, against its bound."""
    out = {}
    for name, param in model.named_parameters():
        if name.endswith("in_proj.bias"):
            d = param.shape[0] // 3
            out[name] = slice(d, 2 * d)
    return out


def assert_params_close(ours, alone, steps):
    skip = key_bias(alone.model)
    for (name, p), q in zip(alone.model.named_parameters(), ours.model.parameters()):
        p, q = p.detach().clone(), q.detach().clone()
        if name in skip:
            lr = max(alone.config.lr_policy, alone.config.lr_value)
            # AdamW moves a parameter by at most ~lr a step: the noise-driven key bias
            # stays within that bound of the alone run's
            assert (p[skip[name]] - q[skip[name]]).abs().max() <= 2 * lr * steps, name
            p[skip[name]] = q[skip[name]] = 0
        # the same arithmetic in batched kernels (another summation order) over tens of
        # steps: float32 rounding, mostly ~1e-8; up to ~2e-6 on the attention's query and
        # key weights, whose small gradients cancel (AdamW scales them up to steps of ~lr).
        # One step of any bug (order, lr, decay) moves a parameter by ~lr = 1e-3
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-5, msg=name)


def assert_optimizers_close(ours, alone):
    skip = key_bias(alone.model)
    names = {id(p): n for n, p in alone.model.named_parameters()}
    for phase, mine in zip(alone.phases, ours.phases):
        assert mine.steps == phase.steps
        for group, my_group in zip(phase.optimizer.param_groups, mine.optimizer.param_groups):
            # the same Python float arithmetic (decay_factor, lr_decay) on both paths
            assert my_group["lr"] == group["lr"]
            for param, my_param in zip(group["params"], my_group["params"]):
                state, my_state = phase.optimizer.state[param], mine.optimizer.state[my_param]
                assert state.keys() == my_state.keys()
                assert my_state["step"].dtype == state["step"].dtype
                assert float(my_state["step"]) == float(state["step"])
                for key in ("exp_avg", "exp_avg_sq"):
                    a, b = state[key].clone(), my_state[key].clone()
                    if names[id(param)] in skip:
                        a[skip[names[id(param)]]] = b[skip[names[id(param)]]] = 0
                    # moments of gradients that differ by float32 rounding (see above)
                    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def assert_metrics_close(ours, alone):
    assert ours.keys() == alone.keys()
    for key in alone:
        # means of float32 losses over the same steps, summed in another order
        assert ours[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6), key


# -- acting ----------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [trmrl, oracle, working_memory])
def test_acting_equals_each_member_alone(make):
    suite = ToySuite()
    members = [make(seed, suite) for seed in (3, 4, 5)]
    for member in members:
        member.values_from_batch = False  # TrMRL's values while acting too, to compare them
    alone = copy.deepcopy(members)
    population = Population(members)
    N, K = 2, len(members)
    tasks = [task for member in members for task in suite.tasks("train", member.seed, N)]
    with TrialSampler(suite, num_envs=K * N, horizon=20, episodes_per_trial=2) as sampler:
        batch = sampler.run(population, tasks)
    for k, agent in enumerate(alone):
        rows = slice(k * N, (k + 1) * N)
        agent.reset(N)
        for t in range(batch.obs.shape[1]):
            step = StepInput(batch.obs[rows, t], batch.prev_action[rows, t],
                             batch.prev_reward[rows, t], batch.episode_start[rows, t],
                             batch.valid[rows, t], batch.task_features[rows])
            out = agent.act(step)
            # one vmapped call for all members vs one member's call: batched matrix
            # products sum in another order, float32 rounding
            np.testing.assert_allclose(batch.action[rows, t], out.action, rtol=1e-5, atol=1e-6)
            for key in ("logp", "value"):
                np.testing.assert_allclose(batch.extras[key][rows, t], out.extras[key],
                                           rtol=1e-5, atol=1e-5)
        # the same draws from the same generator: exact
        assert torch.equal(agent.generator.get_state(), members[k].generator.get_state())


def test_deterministic_acting_and_latents():
    suite = ToySuite()
    members = [trmrl(seed, suite) for seed in (0, 1)]
    population = Population(members)
    population.record_memory = True
    states = [member.generator.get_state() for member in members]
    with TrialSampler(suite, num_envs=2, horizon=20, episodes_per_trial=2) as sampler:
        batch = sampler.run(population, suite.tasks("test", 0, 1) * 2, deterministic=True)
    assert all(torch.equal(m.generator.get_state(), s) for m, s in zip(members, states))
    assert batch.extras["memory"].shape == (2, 40, 16)
    # the same task, different parameters: different actions
    assert not np.allclose(batch.action[0], batch.action[1])


# -- the update ------------------------------------------------------------------------------
def update_both(members, batches, iterations=2, **population):
    """Update a population of ``members`` (options ``population``) and copies of them alone
    on the same batches; (the population, the copies, the copies' metrics per iteration)."""
    alone = copy.deepcopy(members)
    population = Population(members, **population)
    metrics = []
    for _ in range(iterations):
        ours = population.update(batches)
        metrics.append([agent.update(batch) for agent, batch in zip(alone, batches)])
        for mine, reference in zip(ours, metrics[-1]):
            assert_metrics_close(mine, reference)
    return population, alone, metrics


@pytest.mark.parametrize("overrides", [V4, STABILISED], ids=["v4-shared-encoder", "stabilised"])
def test_update_equals_each_member_alone(overrides):
    suite = ToySuite()
    members = [trmrl(seed, suite, **overrides) for seed in (0, 1, 2)]
    batches = [collect(member, suite) for member in members]
    population, alone, metrics = update_both(members, batches)
    for member, agent in zip(population.members, alone):
        steps = sum(stats["minibatch_steps"] for stats in metrics[0] + metrics[1])
        assert_params_close(member, agent, steps)
        assert_optimizers_close(member, agent)
        assert torch.equal(member.generator.get_state(), agent.generator.get_state())
    steps = [[stats["minibatch_steps"] for stats in iteration] for iteration in metrics]
    if overrides is STABILISED:
        # the KL stop ended the members' updates at different steps (4, 3 and 14 of 20)
        assert all(len(set(iteration)) > 1 for iteration in steps)
        assert max(steps[0]) < 20
        # lr_decay after each iteration: two of them
        assert population.members[0].optimizer.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.81)
    else:  # both phases ran every minibatch; the lr decayed inside the iterations
        assert steps == [[2 * 2 * 10] * 3] * 2
        assert metrics[1][0]["lr_policy"] < metrics[0][0]["lr_policy"] < 1e-3


# -- the scheduled update (what a GPU replays from CUDA graphs), here on the CPU ------------
def test_scheduled_minibatches_are_minibatch_indices_draws():
    """The schedule draws each member's permutations from its generator as the per-step
    path does: the same minibatches in the same order, the generators left alike."""
    config = cfg.build_run(TrMRLAgent, {**SIZES, **TRMRL})[1]
    drawn = [torch.Generator().manual_seed(seed) for seed in (3, 4)]
    index, weight = scheduled_minibatches(150, config, drawn)  # 150 = 9 x 16 + 6
    assert index.shape == weight.shape == (2 * 10, 2, 16)
    for k, seed in enumerate((3, 4)):
        generator = torch.Generator().manual_seed(seed)
        expected = list(minibatch_indices(150, config, generator))
        assert len(expected) == index.shape[0]
        for t, minibatch in enumerate(expected):
            n = len(minibatch)
            assert torch.equal(index[t, k, :n], minibatch)
            assert weight[t, k, :n].eq(1).all() and weight[t, k, n:].eq(0).all()
            assert index[t, k, n:].eq(minibatch[0]).all()  # padding repeats a real sample
        assert torch.equal(generator.get_state(), drawn[k].get_state())


@pytest.mark.parametrize("overrides", [V4, {**STABILISED, "target_kl": 0.0}],
                         ids=["v4-shared-encoder", "joint-clipped"])
def test_scheduled_update_equals_each_member_alone(overrides):
    """Every phase scheduled (equal sample counts, no KL stop): each step a fixed-shape
    function over all members, the lrs and bias corrections made before the first step.
    Minibatches of 12: an epoch of 160 samples ends on a padded minibatch of 4, and a phase
    (2 x 14 steps) outlasts the lr schedule's epoch (2 x 160 // 12 = 26 steps), so the
    decaying lr changes inside a phase."""
    suite = ToySuite()
    members = [trmrl(seed, suite, **{**overrides, "minibatch_size": 12}) for seed in (0, 1, 2)]
    batches = [collect(member, suite) for member in members]
    population, alone, metrics = update_both(members, batches, scheduled=True)
    assert set(population._loops) == set(range(len(members[0].phases)))  # the scheduled path ran
    for member, agent in zip(population.members, alone):
        steps = sum(stats["minibatch_steps"] for stats in metrics[0] + metrics[1])
        assert_params_close(member, agent, steps)
        assert_optimizers_close(member, agent)
        assert torch.equal(member.generator.get_state(), agent.generator.get_state())


def test_scheduled_update_keeps_its_storage_and_matches_the_per_step_path():
    """Across updates the scheduled path steps in the same storage (what CUDA graphs
    captured on it read) and with the same step functions; its parameters equal the
    per-step path's up to rounding (zero-weight padding rows change summation order)."""
    suite = ToySuite()
    members = [trmrl(seed, suite, **V4) for seed in (0, 1)]
    batches = [collect(member, suite) for member in members]
    per_step = Population(copy.deepcopy(members), scheduled=False)
    scheduled = Population(members, scheduled=True)
    scheduled.update(batches)
    kept = scheduled.flat.data_ptr(), {p: loop for p, (_, loop) in scheduled._loops.items()}
    for _ in range(2):
        scheduled.update(batches)
    per_step_metrics = [per_step.update(batches) for _ in range(3)][-1]
    assert (scheduled.flat.data_ptr(), {p: loop for p, (_, loop) in scheduled._loops.items()}) == kept
    assert not per_step._loops
    for mine, reference in zip(scheduled.update(batches), per_step.update(batches)):
        assert_metrics_close(mine, reference)
    for mine, reference in zip(scheduled.members, per_step.members):
        assert_params_close(mine, reference, steps=4 * 80)
        assert_optimizers_close(mine, reference)
    del per_step_metrics


def test_steps_per_replay_chunks_run_the_same_steps(monkeypatch):
    """GraphedLoop's chunking, with the CUDA graph stood in by a plain call (CPU): 28 steps a
    phase as 5 replays of 5 steps and 3 of one, in order; the same numbers as step by step
    (the same step function in the same order: exact)."""
    from trmrl import accel
    replays = []

    class PlainCall:  # GraphedStep without the graph: what is captured is what runs
        def __init__(self, step, example, device, **_):
            self.step, self.rows = step, example[0].shape[0]

        def __call__(self, *inputs):
            assert inputs[0].shape[0] == self.rows
            replays.append(self.rows)
            self.step(*inputs)

    monkeypatch.setattr(accel, "GraphedStep", PlainCall)
    suite = ToySuite()
    members = [trmrl(seed, suite, **{**V4, "minibatch_size": 12}) for seed in (0, 1)]
    batches = [collect(member, suite) for member in members]
    stepwise = Population(copy.deepcopy(members), scheduled=True)
    chunked = Population(members, scheduled=True, steps_per_replay=5)
    chunked.graphed = True  # GraphedLoop, on the CPU
    for _ in range(2):
        for mine, reference in zip(chunked.update(batches), stepwise.update(batches)):
            assert mine == reference
    assert replays == ([5] * 5 + [1] * 3) * 2 * 2  # 2 phases x 2 updates
    for mine, reference in zip(chunked.members, stepwise.members):
        assert_state_equal(mine.state_dict(), reference.state_dict())


def test_a_kl_stop_or_uneven_counts_step_per_step():
    """Where members may stop at different steps, the scheduled population falls back to
    per-step masks, and still equals each member alone."""
    suite = ToySuite()
    members = [trmrl(seed, suite, **STABILISED) for seed in (0, 1)]
    batches = [collect(member, suite) for member in members]
    population, alone, _ = update_both(members, batches, iterations=1, scheduled=True)
    assert not population._loops  # target_kl > 0: each step checks the members' KLs
    members, batches = [], []
    for seed, fall_at in zip((0, 1), (0, 7)):
        uneven = ToySuite(fall_at=fall_at)
        members.append(trmrl(seed, uneven, **V4))
        batches.append(collect(members[-1], uneven))
    population, alone, _ = update_both(members, batches, iterations=1, scheduled=True)
    assert not population._loops
    for member, agent in zip(population.members, alone):
        assert_params_close(member, agent, steps=80)


def test_members_with_different_sample_counts():
    """Early terminations leave members 160, 56 and 24 samples: minibatches of 16, the last
    of an epoch 8 or 16 long, so the members run out of steps at different times and are
    masked while the others go on."""
    members, batches = [], []
    for seed, fall_at in zip((0, 1, 2), (0, 7, 3)):
        suite = ToySuite(fall_at=fall_at)
        members.append(trmrl(seed, suite, **V4))
        batches.append(collect(members[-1], suite))
    assert [int(b.valid.sum()) for b in batches] == [160, 56, 24]
    population, alone, metrics = update_both(members, batches)
    assert [stats["minibatch_steps"] for stats in metrics[0]] == [40, 16, 8]
    for member, agent, stats in zip(population.members, alone, metrics[0]):
        assert_params_close(member, agent, steps=2 * stats["minibatch_steps"])
        assert_optimizers_close(member, agent)


def test_reference_agent_update_with_recorded_values_and_observation_scaling():
    """The memoryless reference: values recorded while acting, one joint AdamW, and each
    member's own observation statistics, which the second update reads (stacked buffers)."""
    suite = ToySuite(fall_at=6)
    settings, config = cfg.build_run(MemorylessAgent, {**SIZES, "hidden": [16, 16],
                                                       "max_grad_norm": 0.5,
                                                       "normalize_observations": True})
    members = [MemorylessAgent(config, suite, torch.device("cpu"), seed, settings=settings)
               for seed in (0, 1)]
    batches = [collect(member, suite) for member in members]
    population, alone, metrics = update_both(members, batches)
    for member, agent, stats in zip(population.members, alone, metrics[0]):
        assert_params_close(member, agent, steps=4 * stats["minibatch_steps"])
        assert_optimizers_close(member, agent)
        # the member's own normaliser, on its own batch: one code path
        assert_state_equal(member.obs_normalizer.state_dict(), agent.obs_normalizer.state_dict())
        assert float(member.obs_normalizer.count) == 2 * batches[0].env_steps


def test_a_diverging_member_stops_alone_and_can_be_dropped():
    suite = ToySuite()
    members = [trmrl(seed, suite, **V4) for seed in (0, 1, 2)]
    batches = [collect(member, suite) for member in members]
    with torch.no_grad():
        members[1].model.policy[0].weight[0, 0] = math.nan
    alone = copy.deepcopy(members)
    before = copy.deepcopy(members[1].state_dict())
    population = Population(members)
    ours = population.update(batches)
    with pytest.raises(FloatingPointError):
        alone[1].update(batches[1])
    assert isinstance(ours[1], FloatingPointError)
    assert_state_equal(members[1].state_dict(), before)  # left as it was before the update
    for k in (0, 2):
        assert_metrics_close(ours[k], alone[k].update(batches[k]))
        assert_params_close(members[k], alone[k], steps=80)
    dropped = population.drop(1)
    assert dropped is members[1] and population.size == 2
    again = population.update([batches[0], batches[2]])
    for mine, agent, batch in zip(again, (alone[0], alone[2]), (batches[0], batches[2])):
        assert_metrics_close(mine, agent.update(batch))


def assert_state_equal(a, b):
    """Equal nested checkpoints: tensors element for element (NaN where NaN)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_state_equal(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_state_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b) or torch.allclose(a, b, rtol=0, atol=0, equal_nan=True)
    else:
        assert a == b


def test_member_checkpoint_is_an_ordinary_agents():
    """After a population update a member's state_dict has the layout of one trained alone
    (the same keys, dtypes, optimiser state entries) and loads into a fresh agent, which
    then checkpoints exactly the same (one code path)."""
    suite = ToySuite()
    members = [trmrl(seed, suite, **V4) for seed in (0, 1)]
    batches = [collect(member, suite) for member in members]
    population, alone, _ = update_both(members, batches, iterations=1)
    for member, agent in zip(population.members, alone):
        state = member.state_dict()
        fresh = trmrl(member.seed, suite, **V4)
        fresh.load_state_dict(copy.deepcopy(state))
        assert_state_equal(fresh.state_dict(), state)
        reference = agent.state_dict()
        assert state.keys() == reference.keys()
        assert state["update_steps"] == reference["update_steps"]
        for key in ("optimizer", "value_optimizer"):
            assert state[key]["param_groups"] == reference[key]["param_groups"]
            assert state[key]["state"].keys() == reference[key]["state"].keys()


def test_train_iteration_equals_members_alone():
    """A whole iteration through an ordinary sampler: with resets that ignore the seed, the
    population's K x N trials are each member's N trials."""
    suite = QuietToySuite(fall_at=9)
    members = [trmrl(seed, suite, **STABILISED) for seed in (0, 1)]
    alone = copy.deepcopy(members)
    tasks = suite.tasks("train", 0, 4)
    with TrialSampler(suite, num_envs=8, horizon=20, episodes_per_trial=2) as sampler:
        results = Population(members).train_iteration(sampler, tasks * 2)
    for member, agent, result in zip(members, alone, results):
        with TrialSampler(suite, num_envs=4, horizon=20, episodes_per_trial=2) as sampler:
            reference = agent.train_iteration(sampler, tasks)
        assert result.env_steps == reference.env_steps == 4 * 2 * 9
        # actions differ by float32 rounding (see the acting test), rewards with them
        np.testing.assert_allclose(result.episode_return, reference.episode_return, rtol=1e-5)
        assert_metrics_close(result.metrics, reference.metrics)
        assert_params_close(member, agent, steps=2 * reference.metrics["minibatch_steps"])


# -- the stacked AdamW against torch's -----------------------------------------------------------
def test_stacked_adamw_equals_torch_adamw():
    """Three members with their own lrs, two parameter groups (weight decay in one), steps
    that some members sit out and a parameter without a gradient: each member's columns
    equal a torch.optim.AdamW stepping that member's parameters alone."""
    torch.manual_seed(0)
    shapes = [(5, 3), (3,), (), (2, 2, 4)]
    K, steps = 3, 6
    lrs = [1e-3, 3e-4, 5e-2]
    members = [[torch.nn.Parameter(torch.randn(shape)) for shape in shapes] for _ in range(K)]
    torch_optimizers = [torch.optim.AdamW([{"params": params[:2], "lr": lr},
                                           {"params": params[2:], "lr": 2 * lr,
                                            "weight_decay": 0.0}],
                                          lr=lr, weight_decay=0.01)
                        for params, lr in zip(members, lrs)]
    flat = torch.cat([torch.stack([params[i].detach().reshape(-1) for params in members])
                      for i in range(len(shapes))], 1)
    sizes = [math.prod(shape) for shape in shapes]
    spans = [(sum(sizes[:i]), size) for i, size in enumerate(sizes)]
    span_of = [{id(p): span for p, span in zip(params, spans)} for params in members]
    adam = StackedAdamW.from_optimizers(torch_optimizers, flat, span_of)
    for step in range(steps):
        grads = [torch.randn(K, *shape) for shape in shapes]
        active = np.array([True, step % 2 == 0, step != 3])
        reached = np.array([True, step != 4, True, True])  # parameter 1 has no gradient at step 4
        adam.step(torch.cat([g.reshape(K, -1) for g in grads], 1), active[:, None] & reached)
        for k in np.flatnonzero(active):
            for i, param in enumerate(members[k]):
                param.grad = grads[i][k].clone() if reached[i] else None
            torch_optimizers[k].step()
    for k in range(K):
        for i, (param, (first, size)) in enumerate(zip(members[k], spans)):
            columns = slice(first, first + size)
            # elementwise float32 arithmetic in the same order (bit-identical on the CPUs
            # tried); a vectorised loop may round a fused multiply-add unlike a scalar tail
            torch.testing.assert_close(flat[k, columns].view_as(param), param.detach(),
                                       rtol=1e-6, atol=1e-7)
            state = torch_optimizers[k].state[param]
            for name, ours in (("exp_avg", adam.exp_avg), ("exp_avg_sq", adam.exp_avg_sq)):
                torch.testing.assert_close(ours[k, columns].view_as(param), state[name],
                                           rtol=1e-6, atol=1e-7)
            assert adam.steps[k, i] == float(state["step"])
    # member 0 took every step, member 1 the even ones, member 2 all but step 3; parameter
    # 1 none at step 4
    assert adam.steps[:, 1].tolist() == [5, 2, 4] and adam.steps[:, 0].tolist() == [6, 3, 5]


# -- what cannot be a population -----------------------------------------------------------------
def test_supported_agents():
    for cls in (TrMRLAgent, OracleAgent, MemorylessAgent, WorkingMemoryAgent):
        assert population_support(cls) is None, cls
    from baselines.maml.maml import MAMLAgent
    from baselines.pearl.agent import PEARLAgent
    from baselines.rl2.rl2 import RL2Agent
    from baselines.varibad.varibad import VariBADAgent
    assert "nn.GRU" in population_support(RL2Agent)
    assert "overrides PPOAgent.update" in population_support(VariBADAgent)
    assert "not a PPO agent" in population_support(MAMLAgent)
    assert "not a PPO agent" in population_support(PEARLAgent)
    compiled = trmrl(0)
    compiled.compiled = True  # as built on a GPU with cuda_graphs and torch_compile
    assert "set torch_compile=false" in population_support(compiled)


@pytest.mark.parametrize("make, message", [
    (lambda: [trmrl(0), trmrl(1, lr_policy=1e-4)], r"differ in lr_policy \(3e-05 vs 0.0001\)"),
    (lambda: [trmrl(0), oracle(1)], "one agent class, got OracleAgent, TrMRLAgent"),
    (lambda: [trmrl(0), trmrl(0)], "distinct seeds; repeated: 0"),
    (lambda: [], "at least one member"),
    (lambda: [trmrl(0), trmrl(1, suite=ToySuite())], None),  # equal suites by name: fine
])
def test_refusals_name_the_bad_values(make, message):
    agents = make()
    if message is None:
        Population(agents)
        return
    with pytest.raises(ConfigError, match=message):
        Population(agents)


def test_rl2_members_are_refused():
    from baselines.rl2.rl2 import RL2Agent
    settings, config = cfg.build_run(RL2Agent, {**SIZES, "gru_size": 8})
    agents = [RL2Agent(config, ToySuite(), torch.device("cpu"), seed, settings=settings)
              for seed in (0, 1)]
    with pytest.raises(ConfigError, match="no population for agent rl2: .*GRU"):
        Population(agents)


def test_split_batch_is_member_major():
    suite = ToySuite()
    batch = collect(trmrl(0, suite), suite, trials=6)
    parts = split_batch(batch, 3)
    assert [p.num_trials for p in parts] == [2, 2, 2]
    assert parts[1].tasks == batch.tasks[2:4]
    np.testing.assert_array_equal(parts[2].obs, batch.obs[4:])
    np.testing.assert_array_equal(parts[0].extras["logp"], batch.extras["logp"][:2])
