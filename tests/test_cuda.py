"""GPU paths (skipped without CUDA): the CUDA-graph PPO update equals the eager one."""

import copy

import numpy as np
import pytest
import torch

from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.agents.trmrl import TrMRLAgent, TrMRLConfig
from trmrl.sampling import TrialSampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def agent_pair(**overrides):
    values = dict(layers=2, heads=2, d_model=16, d_ff=32, wm_size=4, trials_per_update=6,
                  minibatch_size=16, epochs=3, lr_policy=1e-3, lr_value=1e-3, **overrides)
    graphed = TrMRLAgent(cfg.build(TrMRLConfig, values), ToySuite(fall_at=4), torch.device("cuda"), 0)
    eager = TrMRLAgent(cfg.build(TrMRLConfig, {**values, "cuda_graphs": False}), ToySuite(fall_at=4),
                       torch.device("cuda"), 0)
    eager.model.load_state_dict(graphed.model.state_dict())
    return graphed, eager


@pytest.mark.parametrize("overrides", [{}, {"center_advantages": True, "max_grad_norm": 0.5,
                                            "lr_decay": 0.9}])
def test_graphed_update_matches_eager(overrides):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    graphed, eager = agent_pair(**overrides)
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
    lr_g = [float(g["lr"]) for g in graphed.optimizer.param_groups]
    lr_e = [float(g["lr"]) for g in eager.optimizer.param_groups]
    assert lr_g == pytest.approx(lr_e)


def test_graphed_acting_matches_eager():
    graphed, eager = agent_pair()
    suite = graphed.suite
    batches = []
    for agent in (graphed, eager):
        agent.record_memory = True
        with TrialSampler(suite, num_envs=6, seed=3) as sampler:
            batches.append(sampler.run(agent, suite.tasks("test", 0, 6), deterministic=True))
    for key in ("logp", "value", "memory"):
        np.testing.assert_allclose(batches[0].extras[key], batches[1].extras[key], rtol=1e-4, atol=1e-5)


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
    graphed.update(copy.deepcopy(batch))  # and back: re-captured after the load
    assert np.isfinite([p.sum().item() for p in graphed.model.parameters()]).all()
