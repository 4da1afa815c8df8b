"""The PPO update of K runs: K separate ``agent.update(batch)`` calls vs one ``Population.update``.

Builds K agents (seeds 0..K-1) with an env's defaults (by default TrMRL on ml1-reach: the
released config, 32-sample minibatches, a policy and then a value phase) and gives each a
synthetic batch of the full iteration size (trials_per_update x episodes x horizon steps:
random observations, actions and rewards, no env steps; the log-probs are each agent's own,
so the update starts at ratio 1). Then times, on the same CPUs and in turn, the K updates one
after another and the population's one update of all K, from copies of the same agents, and
prints the ratio (issue 20's target: >= 2.5x for K = 4 on 2 cores). Both sides run the same
minibatch steps; the ratio is per step, so one epoch (the default) measures what the
released 10 do. Wall and CPU time are printed: on a machine shared with other jobs, use
``--threads 1``, whose CPU time is what the update computed whatever else ran (with two
threads, OpenMP waits on a descheduled thread and both figures inflate). Examples:

    python benchmarks/population_update.py                      # ml1-reach, K = 4, 1 epoch
    python benchmarks/population_update.py --trials 5 --threads 1
    python benchmarks/population_update.py --trials 1 --profile 15
"""

from __future__ import annotations

import argparse
import copy
import os
import time

import numpy as np
import torch

from trmrl.population import Population
from trmrl.sampling import TrialBatch
from trmrl.train import build_agent, resolve
from trmrl.utils import available_cpus


def synthetic_batch(agent, trials: int, rng: np.random.Generator) -> TrialBatch:
    """A full batch of ``trials`` trials with random steps, log-probs under ``agent``."""
    suite, config = agent.suite, agent.config
    episodes = config.episodes_per_trial or suite.episodes_per_trial
    horizon = config.horizon or suite.horizon
    T, obs_dim, act_dim = episodes * horizon, suite.observation_dim, suite.action_dim
    obs = rng.normal(size=(trials, T, obs_dim)).astype(np.float32)
    action = rng.normal(size=(trials, T, act_dim)).astype(np.float32)
    reward = rng.normal(size=(trials, T)).astype(np.float32)
    episode_start = np.zeros((trials, T), bool)
    episode_start[:, ::horizon] = True
    prev_action, prev_reward = np.zeros_like(action), np.zeros_like(reward)
    prev_action[:, 1:], prev_reward[:, 1:] = action[:, :-1], reward[:, :-1]
    valid = np.ones((trials, T), bool)
    batch = TrialBatch(
        tasks=[], obs=obs, prev_action=prev_action, prev_reward=prev_reward,
        episode_start=episode_start, action=action, reward=reward, next_obs=obs,
        terminated=np.zeros_like(valid), truncated=np.zeros_like(valid),
        success=np.zeros((trials, T), np.float32),
        episode_index=(np.cumsum(episode_start, 1) - 1).astype(np.int16), valid=valid,
        task_features=np.zeros((trials, len(suite.task_features(suite.tasks("test", 0, 1)[0]))),
                               np.float32),
        episode_return=np.zeros((trials, episodes)),
        episode_length=np.full((trials, episodes), horizon, np.int32),
        episode_success=np.zeros((trials, episodes), np.float32))
    inputs = {k: v.flatten(0, 1) for k, v in agent.batch_inputs(batch).items()}
    actions = torch.from_numpy(action).flatten(0, 1)
    chunks = [{"action": actions[lo:lo + 8192],
               **{"input_" + k: v[lo:lo + 8192] for k, v in inputs.items()}}
              for lo in range(0, len(actions), 8192)]
    with torch.no_grad():
        logp = torch.cat([agent.evaluate_policy(chunk)[0] for chunk in chunks])
    batch.extras["logp"] = logp.reshape(trials, T).numpy()
    return batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="trmrl")
    parser.add_argument("--env", default="ml1-reach")
    parser.add_argument("--members", type=int, default=4, help="K: runs (seeds 0..K-1)")
    parser.add_argument("--trials", type=int, default=None,
                        help="trials per batch (default: the config's trials_per_update)")
    parser.add_argument("--epochs", type=int, default=1,
                        help="PPO epochs (the config's is 10; the ratio is per minibatch step)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each side, in turn; the shortest counts")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: every available CPU; on a machine shared "
                        "with other jobs, 1 avoids OpenMP threads waiting on descheduled ones)")
    parser.add_argument("--scheduled", choices=("auto", "on", "off"), default="auto",
                        help="the population's scheduled update (laid out before the first "
                        "step; on a GPU from CUDA graphs): auto = where the members use CUDA "
                        "graphs, as training does")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="then profile a short population update and print its top ROWS ops")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or available_cpus())
    scheduled = {"auto": None, "on": True, "off": False}[args.scheduled]
    load_before = os.getloadavg()
    overrides = {"epochs": args.epochs}
    agents = [build_agent(resolve(args.agent, args.env, seed, device="cpu", overrides=overrides))
              for seed in range(args.members)]
    hp = agents[0].config
    trials = args.trials or hp.trials_per_update
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(agent, trials, rng) for agent in agents]
    samples = int(batches[0].valid.sum())
    print(f"{args.agent} on {args.env}: K={args.members} members, {trials} trials = {samples:,} "
          f"samples each, {hp.epochs} epoch(s) of {hp.minibatch_size}-sample minibatches, "
          f"update_order={hp.update_order}; {torch.get_num_threads()} torch threads, "
          f"{available_cpus()} CPUs")
    # each side runs from copies of the same agents, in turn, and the shortest of its runs
    # counts: on a machine shared with other jobs, a run they slowed down shows as longer.
    # Beside the wall time, the process's CPU time (with one thread, what the update itself
    # computed, whatever else ran; with several, it counts their waiting too)
    times: dict[str, list[tuple[float, float]]] = {"separate": [], "population": []}
    for _ in range(args.repeats):
        alone = copy.deepcopy(agents)
        wall, cpu = time.perf_counter(), time.process_time()
        alone_steps = sum(agent.update(batch)["minibatch_steps"]
                          for agent, batch in zip(alone, batches))
        times["separate"].append((time.perf_counter() - wall, time.process_time() - cpu))
        population = Population(copy.deepcopy(agents), scheduled=scheduled)
        wall, cpu = time.perf_counter(), time.process_time()
        results = population.update(batches)
        times["population"].append((time.perf_counter() - wall, time.process_time() - cpu))
        population_steps = sum(r["minibatch_steps"] for r in results)
        assert population_steps == alone_steps, (population_steps, alone_steps)
    best = {}
    for side, runs in times.items():
        best[side] = [min(run[i] for run in runs) for i in (0, 1)]
        print(f"{side:>10}: wall {best[side][0]:7.2f} s, CPU {best[side][1]:7.2f} s, best of "
              f"{args.repeats} (wall {', '.join(f'{wall:.2f}' for wall, _ in runs)}); "
              f"{best[side][0] / alone_steps * 1e3:.2f} ms wall per member minibatch step")
    print(f"ratio separate / population: wall {best['separate'][0] / best['population'][0]:.2f}x, "
          f"CPU {best['separate'][1] / best['population'][1]:.2f}x "
          "(issue 20's target: >= 2.5x wall for K=4 on 2 cores)")
    print(f"load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}")

    if args.profile:
        short = [synthetic_batch(agent, 1, rng) for agent in agents]
        population = Population(copy.deepcopy(agents), scheduled=scheduled)
        with torch.profiler.profile() as profiler:
            population.update(short)
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))


if __name__ == "__main__":
    main()
