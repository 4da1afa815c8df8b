"""GPU paths (skipped without CUDA): trmrl.accel's CUDA-graph PPO update, acting step and PEARL
gradient step, and a population's graphed update, equal the eager ones; checkpoints move
between CPU and GPU."""

import copy
import dataclasses

import numpy as np
import pytest
import torch

from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.accel import GraphedActing, GraphedLoop, GraphedPPOUpdate
from trmrl.agents.ppo_agent import EagerActing
from trmrl.agents.trmrl import TrMRLAgent
from trmrl.population import Population, split_batch
from trmrl.sampling import TrialSampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def agent_pair(**overrides):
    values = dict(layers=2, heads=2, d_model=16, d_ff=32, wm_size=4, trials_per_update=6,
                  minibatch_size=16, epochs=3, lr_policy=1e-3, lr_value=1e-3, **overrides)
    # one flat mapping as --set takes it: torch_compile goes to the trainer settings
    settings, config = cfg.build_run(TrMRLAgent, values)
    graphed = TrMRLAgent(config, ToySuite(fall_at=4), torch.device("cuda"), 0, settings=settings)
    eager = TrMRLAgent(config, ToySuite(fall_at=4), torch.device("cuda"), 0,
                       settings=dataclasses.replace(settings, cuda_graphs=False))
    eager.model.load_state_dict(graphed.model.state_dict())
    return graphed, eager


RELEASED = {"update_order": "policy_then_value", "value_loss": "gaussian_nll",
            "value_target": "discounted_return", "weight_decay": 0.01, "lr_schedule_policy": "decay",
            "lr_schedule_value": "decay", "lr_decay_start": 0, "lr_decay_end": 3,
            "lr_min_factor": 0.1, "episode_start_memory": "reset",
            "window_positions": "from_episode_start", "ff_bias_init": "torch", "min_std": 1e-6}


@pytest.mark.parametrize("overrides", [
    {}, {"center_advantages": True, "max_grad_norm": 0.5, "lr_decay": 0.9},
    {**RELEASED, "shared_encoder": False, "separate_value_encoder": False},  # defaults v4
    {**RELEASED, "shared_encoder": True}],  # v4 with the value optimiser holding the policy
    ids=["joint", "joint-clipped", "released", "released-shared"])
def test_graphed_update_matches_eager(overrides):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed, eager = agent_pair(**overrides)
    # each agent chose its steps once, when built
    assert isinstance(graphed.run_update, GraphedPPOUpdate) and isinstance(graphed.run_acting, GraphedActing)
    assert not isinstance(eager.run_update, GraphedPPOUpdate) and isinstance(eager.run_acting, EagerActing)
    initial = [p.detach().clone() for p in eager.model.parameters()]
    suite = graphed.suite
    with TrialSampler(suite, num_envs=6) as sampler:
        batches = [sampler.run(eager, suite.tasks("train", i, 6)) for i in range(2)]
    for batch in batches:  # two iterations: the second replays the captured graph
        graphed.generator.set_state(eager.generator.get_state())  # same minibatch order
        stats_g = graphed.update(copy.deepcopy(batch))
        stats_e = eager.update(copy.deepcopy(batch))
        for key in stats_e:
            assert stats_g[key] == pytest.approx(stats_e[key], rel=1e-3, abs=1e-5), key
    # fused (graphed) and foreach (eager) AdamW round differently, and Adam's normalisation
    # magnifies that for near-zero gradients: compare against the size of the whole update
    moved = max((pe - p0).abs().max().item() for pe, p0 in zip(eager.model.parameters(), initial))
    for (name, pg), pe in zip(graphed.model.named_parameters(), eager.model.parameters()):
        assert (pg - pe).abs().max().item() <= 0.1 * moved, name
    for phase_g, phase_e in zip(graphed.phases, eager.phases):
        assert phase_g.steps == phase_e.steps
        lr_g = [float(g["lr"]) for g in phase_g.optimizer.param_groups]
        lr_e = [float(g["lr"]) for g in phase_e.optimizer.param_groups]
        assert lr_g == pytest.approx(lr_e)


@pytest.mark.parametrize("deterministic", [True, False])
def test_graphed_acting_matches_eager(deterministic):
    """The graphed acting step (memory update, model, noise and log-prob in one graph) acts
    as the eager one: 9 trials on 6 slots give rounds of 6 and 3 rows (two graphs), and each
    round starts from a cleared memory."""
    graphed, eager = agent_pair()
    suite = graphed.suite
    batches = []
    for agent in (graphed, eager):
        agent.record_memory = True
        agent.generator.manual_seed(7)  # the same action noise
        with TrialSampler(suite, num_envs=6, seed=3) as sampler:
            batches.append(sampler.run(agent, suite.tasks("test", 0, 9), deterministic=deterministic))
    assert sorted(graphed.run_acting.graphs) == [3, 6]
    assert sorted(batches[0].extras) == ["logp", "memory"]  # TrMRL's values come from the batch
    for key in ("logp", "memory"):
        np.testing.assert_allclose(batches[0].extras[key], batches[1].extras[key], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batches[0].action, batches[1].action, rtol=1e-4, atol=1e-5)


def test_graphed_acting_on_a_pipelined_sampler_matches_one_lane():
    """Pipelined, the agent and its acting view each replay graphs of their own (a graph holds
    the memory it updates), and act as the agent alone on every slot."""
    graphed, _ = agent_pair()
    suite = graphed.suite
    tasks = suite.tasks("test", 0, 6)
    with TrialSampler(suite, num_envs=6, num_workers=2, pipeline=True, seed=3) as sampler:
        assert sampler.pipeline
        piped = sampler.run(graphed, tasks, deterministic=True)
        again = sampler.run(graphed, tasks, deterministic=True, call=0)  # graphs replayed
    assert graphed.acting_view() is graphed.acting_view()  # made once: graphs captured once
    assert list(graphed.run_acting.graphs) == [3] and list(graphed.acting_view().run_acting.graphs) == [3]
    with TrialSampler(suite, num_envs=6, seed=3) as sampler:
        whole = sampler.run(graphed, tasks, deterministic=True)
    for batch in (piped, again):
        np.testing.assert_allclose(batch.action, whole.action, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batch.extras["logp"], whole.extras["logp"], rtol=1e-5, atol=1e-6)


def test_compiling_keeps_the_model_and_its_checkpoint_keys():
    from torch.utils._triton import has_triton
    graphed, eager = agent_pair()
    assert graphed.compiled == has_triton() and not eager.compiled
    assert list(graphed.model.state_dict()) == list(eager.model.state_dict())
    uncompiled, _ = agent_pair(torch_compile=False)
    assert not uncompiled.compiled


def test_checkpoints_move_between_cpu_and_gpu_paths():
    graphed, _ = agent_pair()
    suite = graphed.suite
    with TrialSampler(suite, num_envs=6) as sampler:
        batch = sampler.run(graphed, suite.tasks("train", 0, 6))
    graphed.update(batch)
    state = graphed.state_dict()
    cpu = TrMRLAgent(graphed.config, suite, torch.device("cpu"), 0)
    cpu.load_state_dict(state)
    cpu.update(copy.deepcopy(batch))  # eager AdamW accepts the graphed optimiser state
    graphed.load_state_dict(cpu.state_dict())
    assert graphed.run_update.graphs is None  # dropped with the old optimiser state
    graphed.update(copy.deepcopy(batch))  # and back: re-captured after the load
    assert graphed.run_update.graphs is not None
    assert np.isfinite([p.sum().item() for p in graphed.model.parameters()]).all()


# -- PEARL: one gradient step per CUDA graph replay ---------------------------------------------
PEARL_SMALL = dict(trials_per_update=3, hidden=(32, 32), encoder_hidden=(16,), latent_dim=3,
                   num_train_tasks=4, num_initial_steps=20, num_steps_prior=10,
                   num_extra_rl_steps_posterior=10, num_train_steps_per_itr=5, meta_batch=4,
                   batch_size=16, context_batch_size=8, lr_policy=1e-3, lr_q=1e-3, lr_v=1e-3,
                   lr_encoder=1e-3)


def pearl_agent(device, **overrides):
    from baselines.pearl import PEARLAgent
    settings, config = cfg.build_run(PEARLAgent, {**PEARL_SMALL, **overrides})
    return PEARLAgent(config, ToySuite(fall_at=4), torch.device(device), 0, settings=settings)


def test_pearl_graphed_gradient_steps_match_eager():
    """From the same state and the same CUDA generator state, graph replays and eager steps
    give the same losses and parameters, also after the replay storage grew (a new capture)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed = pearl_agent("cuda", tf32=False)
    eager = pearl_agent("cuda", cuda_graphs=False, tf32=False)
    assert isinstance(graphed.run_steps, GraphedLoop) and not isinstance(eager.run_steps, GraphedLoop)
    with TrialSampler(eager.suite, num_envs=3) as sampler:
        eager.train_iteration(sampler, [])  # fills the buffers (and takes eager steps)
    eager.close()
    graphed.load_state_dict(eager.state_dict())  # an eager checkpoint into the graphed path
    initial = [p.detach().clone() for p in eager.nets.parameters()]
    keys = []
    for round_ in range(2):
        if round_:  # more transitions than the storage holds: it moves, the graph is recaptured
            extra = torch.randn(len(eager.replay.data), eager.replay.width, device="cuda")
            extra[:, eager.obs_dim + eager.act_dim + 1] = 0.0
            for agent in (graphed, eager):
                agent.replay.add(1, extra)
        rng = torch.cuda.get_rng_state()
        stats_g = graphed.update(20)
        keys.append(graphed.run_steps.graph_key)
        torch.cuda.set_rng_state(rng)
        stats_e = eager.update(20)
        for key in stats_e:
            assert stats_g[key] == pytest.approx(stats_e[key], rel=1e-4, abs=1e-6), key
    assert keys[0] != keys[1]
    # both paths run the same kernels (fused Adam too): seen equal to the bit on an H200;
    # allow rounding, which Adam's normalisation would magnify for near-zero gradients
    moved = max((pe - p0).abs().max().item() for pe, p0 in zip(eager.nets.parameters(), initial))
    for (name, pg), pe in zip(graphed.nets.named_parameters(), eager.nets.parameters()):
        assert (pg - pe).abs().max().item() <= 1e-3 * moved, name  # v_target's included


def test_pearl_checkpoints_move_between_cpu_and_gpu_and_acting_agrees():
    gpu = pearl_agent("cuda")
    with TrialSampler(gpu.suite, num_envs=3) as sampler:
        gpu.train_iteration(sampler, [])
        cpu = pearl_agent("cpu")
        cpu.load_state_dict(gpu.state_dict())
        cpu.train_iteration(sampler, [])  # eager Adam takes the graphed optimiser state
        gpu.load_state_dict(cpu.state_dict())
        gpu.train_iteration(sampler, [])  # and back: captured again after the load
    gpu.close()
    cpu.close()
    assert all(torch.isfinite(p).all() for p in gpu.nets.parameters())
    cpu.load_state_dict(gpu.state_dict())
    batches = []
    for agent in (gpu, cpu):  # deterministic trials: same z draws, the same actions
        agent.record_memory = True
        with TrialSampler(agent.suite, num_envs=4, seed=3) as sampler:
            batches.append(sampler.run(agent, agent.suite.tasks("test", 0, 4), deterministic=True))
    np.testing.assert_allclose(batches[0].action, batches[1].action, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(batches[0].extras["memory"], batches[1].extras["memory"],
                               rtol=1e-4, atol=1e-5)


# -- a population's update from CUDA graphs ------------------------------------------------------
def population_pair(steps_per_replay, **overrides):
    """Two populations of the same 3 members on the GPU: one replaying its scheduled update
    from CUDA graphs (members with cuda_graphs), one running the same scheduled steps eagerly."""
    values = dict(layers=1, heads=2, d_model=16, d_ff=32, wm_size=4, trials_per_update=4,
                  horizon=20, episodes_per_trial=2, minibatch_size=12, epochs=2,
                  lr_policy=1e-3, lr_value=1e-3, torch_compile=False, **{**RELEASED, **overrides})
    settings, config = cfg.build_run(TrMRLAgent, values)
    suite = ToySuite()
    graphed = [TrMRLAgent(config, suite, torch.device("cuda"), seed, settings=settings)
               for seed in (0, 1, 2)]
    eager = [TrMRLAgent(config, suite, torch.device("cuda"), seed,
                        settings=dataclasses.replace(settings, cuda_graphs=False))
             for seed in (0, 1, 2)]
    for g, e in zip(graphed, eager):
        e.model.load_state_dict(g.model.state_dict())
        e.generator.set_state(g.generator.get_state())
    return (Population(graphed, steps_per_replay=steps_per_replay),
            Population(eager, scheduled=True), suite)


@pytest.mark.parametrize("steps_per_replay", [1, 5])
def test_graphed_population_update_matches_its_eager_steps(steps_per_replay):
    """The scheduled population update replayed from CUDA graphs (5 steps a replay: each
    phase's 28 steps as 5 replays and 3 one-step replays) equals the same steps run eagerly,
    captured once and replayed again in the second update; the members' checkpoints keep
    the graphed layout (AdamW step counts on the GPU)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed, eager, suite = population_pair(steps_per_replay)
    assert graphed.graphed and graphed.scheduled and not eager.graphed
    with TrialSampler(suite, num_envs=12, horizon=20, episodes_per_trial=2) as sampler:
        tasks = [task for seed in (0, 1, 2) for task in suite.tasks("train", seed, 4)]
        batch = sampler.run(eager, tasks)
    batches = split_batch(batch, 3)
    for g, e in zip(graphed.members, eager.members):  # sampling drew from the eager ones'
        g.generator.set_state(e.generator.get_state())
    loops = None
    for _ in range(2):
        ours, reference = graphed.update(batches), eager.update(batches)
        for mine, theirs in zip(ours, reference):
            for key in theirs:
                # the same kernels replayed: equal up to reductions that a graph may order
                # differently (cuBLAS workspaces); bugs move metrics by far more
                assert mine[key] == pytest.approx(theirs[key], rel=1e-5, abs=1e-7), key
        current = {p: loop for p, (_, loop) in graphed._loops.items()}
        assert loops is None or current == loops  # replayed, not captured again
        loops = current
    assert all(isinstance(loop, GraphedLoop) for loop in loops.values())
    assert sorted(next(iter(loops.values())).graphs) == sorted({1, steps_per_replay})
    for g, e in zip(graphed.members, eager.members):
        for (name, pg), pe in zip(g.model.named_parameters(), e.model.parameters()):
            torch.testing.assert_close(pg, pe, rtol=1e-5, atol=1e-6, msg=name)
        state = g.phases[0].optimizer.state_dict()["state"]
        assert all(s["step"].device.type == "cuda" for s in state.values())
        assert g.phases[0].steps == e.phases[0].steps == 2 * 2 * 14


def test_graphed_population_acting_matches_eager():
    """A population's acting step replayed from a CUDA graph gives the eager population's
    actions, log-probs and latents on the same trials (the same draws of every member's
    generator), over two rounds of trials (the graph captured once, its memory reset)."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed, eager, suite = population_pair(1)
    graphed.record_memory = eager.record_memory = True
    tasks = [task for seed in (0, 1, 2) for task in suite.tasks("train", seed, 4)]
    for _ in range(2):
        with TrialSampler(suite, num_envs=12, horizon=20, episodes_per_trial=2) as sampler:
            ours = sampler.run(graphed, tasks)
        with TrialSampler(suite, num_envs=12, horizon=20, episodes_per_trial=2) as sampler:
            reference = sampler.run(eager, tasks)
        # the same kernels replayed; actions feed back through the env, so allow rounding
        np.testing.assert_allclose(ours.action, reference.action, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours.extras["logp"], reference.extras["logp"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ours.extras["memory"], reference.extras["memory"],
                                   rtol=1e-5, atol=1e-5)
    assert len(graphed._acting_graphs) == 1
    for g, e in zip(graphed.members, eager.members):
        assert torch.equal(g.generator.get_state(), e.generator.get_state())
