"""How much of MAML's inner step survives when it is estimated from fewer episodes.

For each of a few cheetah-vel test tasks, runs episodes with theta (sampled actions, as MAML
adapts) and compares the inner step's direction -grad L_i(theta) estimated from N episodes
(baseline fitted and advantages standardised on those N, as the inner step does) with a
reference from 200 other episodes: cosine similarity and norm ratio, median over the
disjoint N-episode subsets of 40 episodes. theta: a run's checkpoint (--run), else the
initial parameters of `trmrl train --agent maml --env cheetah-vel --seed 0`.

    PYTHONPATH=. python docs/agents/maml_inner_step_noise.py [--run RUN_DIR] [--tasks 4]
"""

import argparse

import numpy as np
import torch

from baselines.maml.maml import episode_advantages, grouped
from trmrl.sampling import TrialSampler
from trmrl.train import build_agent, load_run, resolve

REFERENCE_EPISODES, SUBSET_POOL, SUBSET_SIZES = 200, 40, (1, 5, 20, 40)


def inner_direction(agent, obs, action, reward, mask) -> torch.Tensor:
    """-grad L(theta) (the inner step divided by inner_lr) from one task's episodes [E, H, ...]."""
    config = agent.config
    advantage = episode_advantages(obs, reward, mask, config.gamma, config.gae_lambda,
                                   config.baseline_reg)
    data = agent._to_torch(obs[None], action[None], advantage[None], mask[None])
    theta = grouped([p.detach() for p in agent.theta], 1)
    adapted = agent.inner_step(theta, data, create_graph=False)
    return torch.cat([(a - p).reshape(-1) for a, p in zip(adapted, theta)]) / config.inner_lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a MAML run directory (default: theta at initialisation)")
    parser.add_argument("--tasks", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.run:
        spec, agent = load_run(args.run, "cpu")
    else:
        spec = resolve("maml", "cheetah-vel", 0, device="cpu")
        agent = build_agent(spec)
    tasks = agent.suite.eval_tasks("test", spec.seed, args.tasks)
    episodes = REFERENCE_EPISODES + SUBSET_POOL
    with torch.no_grad():
        theta = [p.detach().clone() for p in grouped(agent.theta, len(tasks))]
    with TrialSampler(agent.suite, len(tasks) * episodes, episodes_per_trial=1,
                      horizon=spec.hyperparameters.horizon, seed=spec.seed + 30_000) as sampler:
        batch = agent._collect(sampler, tasks, theta, episodes, eval_step=0)
    G = len(tasks)
    obs = batch.obs.reshape(G, episodes, *batch.obs.shape[1:]).astype(np.float64)
    action = agent.policy_units(batch.action).reshape(G, episodes, *batch.action.shape[1:])
    reward = batch.reward.reshape(G, episodes, -1).astype(np.float64)
    mask = batch.valid.reshape(G, episodes, -1)
    cosines = {n: [] for n in SUBSET_SIZES}
    norms = {n: [] for n in SUBSET_SIZES}
    for g in range(G):
        ref = slice(0, REFERENCE_EPISODES)
        reference = inner_direction(agent, obs[g, ref], action[g, ref], reward[g, ref], mask[g, ref])
        for n in SUBSET_SIZES:
            for lo in range(REFERENCE_EPISODES, episodes, n):
                part = slice(lo, lo + n)
                d = inner_direction(agent, obs[g, part], action[g, part], reward[g, part], mask[g, part])
                cosines[n].append(float(torch.nn.functional.cosine_similarity(d, reference, 0)))
                norms[n].append(float(d.norm() / reference.norm()))
    print(f"theta: {args.run or 'initial (seed 0)'}; {G} test tasks, reference from "
          f"{REFERENCE_EPISODES} episodes each")
    print("N episodes | subsets | median cos(step_N, reference) | median |step_N| / |reference|")
    for n in SUBSET_SIZES:
        print(f"{n:10d} | {len(cosines[n]):7d} | {np.median(cosines[n]):29.3f} | {np.median(norms[n]):.2f}")
    agent.close()


if __name__ == "__main__":
    main()
