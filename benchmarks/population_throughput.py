"""Population training against separate runs on the same CPUs (issue 20, part 5).

Trains K seeds (0..K-1) of one agent x env for a fixed number of learning iterations twice:
as K single-seed runs one after another (each its own sampler and agent, as `trmrl train
--seed S` runs it), and as one population (`trmrl train --seed 0 1 ... K-1`: one sampler steps
the K x trials envs, one Population acts and updates all K). Prints, for both, the env steps/s
end to end and the time of the update phase, and their ratios (issue 20's targets on 2 cores,
TrMRL on ml1-reach with its released config, K = 4: update >= 2.5x, end to end >= 1.5x).
Each side times what training does per iteration: sampling (acting and env steps) and the
update; task sampling, evaluations and checkpoints are left out of both.

    python benchmarks/population_throughput.py --env ml1-reach --set num_workers=2
    python benchmarks/population_throughput.py --env cheetah-vel --iterations 2
    python benchmarks/population_throughput.py --device cuda --seeds 8 --set num_workers=14

On a GPU both sides replay their updates from CUDA graphs (`cuda_graphs`, the default; the
population where every member steps at every minibatch step); `--set cuda_graphs=false`
measures both eagerly.

The separate runs go around the population (half of them before it, half after), so that a
load that changes during the measurement falls on both sides alike; the load averages before
and after are printed. `--set epochs=E` shortens the update of both sides alike: every planned
minibatch step runs (the released config has no KL stop), so the update time scales with the
epochs, and the script also prints the end-to-end ratio the agent's default epochs would give
from the measured phases (labelled as such).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from trmrl import config as cfg
from trmrl.envs import make_suite
from trmrl.population import Population
from trmrl.sampling import TrialSampler
from trmrl.train import build_agent, resolve, uncompiled
from trmrl.utils import available_cpus, trainer_threads


def task_stream(seed: int) -> np.random.Generator:
    """A run's task stream, as `trmrl train` seeds it."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7]))


def synchronize(device: torch.device) -> None:
    """Wait for the device, so that a phase's time includes its queued GPU work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def separate_run(spec, suite, iterations: int) -> dict[str, float]:
    """One seed alone for ``iterations`` iterations: seconds sampling and updating, env steps."""
    hp, settings = spec.hyperparameters, spec.settings
    agent = build_agent(spec, suite)
    sampler = TrialSampler(suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial,
                           num_workers=settings.num_workers, seed=spec.seed,
                           pipeline=settings.pipeline_sampling)
    rng = task_stream(spec.seed)
    totals = {"sample_s": 0.0, "update_s": 0.0, "env_steps": 0}
    try:
        for _ in range(iterations):
            tasks = suite.sample_tasks(rng, hp.trials_per_update, spec.seed)
            began = time.perf_counter()
            agent.model.eval()  # as PPOAgent.train_iteration
            batch = sampler.run(agent, tasks)
            agent.model.train()
            sampled = time.perf_counter()
            agent.update(batch)
            synchronize(agent.device)
            totals["sample_s"] += sampled - began
            totals["update_s"] += time.perf_counter() - sampled
            totals["env_steps"] += batch.env_steps
    finally:
        sampler.close()
        agent.close()
    return totals


def population_run(specs, suite, iterations: int) -> dict[str, float]:
    """All seeds in one population, as Population.train_iteration runs them, timed by phase."""
    hp, settings = specs[0].hyperparameters, specs[0].settings
    members = [build_agent(spec, suite) for spec in specs]
    population = Population(members)
    K = len(members)
    sampler = TrialSampler(suite, hp.trials_per_update * K, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial,
                           num_workers=settings.num_workers, seed=[spec.seed for spec in specs],
                           pipeline=settings.pipeline_sampling)
    streams = [task_stream(spec.seed) for spec in specs]
    totals = {"sample_s": 0.0, "update_s": 0.0, "env_steps": 0}
    try:
        for _ in range(iterations):
            tasks = [task for spec, rng in zip(specs, streams)
                     for task in suite.sample_tasks(rng, hp.trials_per_update, spec.seed)]
            began = time.perf_counter()
            for member in members:
                member.model.eval()
            batch = sampler.run(population, tasks)
            for member in members:
                member.model.train()
            sampled = time.perf_counter()
            results = population.update(batch.split(K))
            synchronize(population.device)
            totals["sample_s"] += sampled - began
            totals["update_s"] += time.perf_counter() - sampled
            totals["env_steps"] += batch.env_steps
            diverged = [r for r in results if isinstance(r, FloatingPointError)]
            if diverged:
                raise SystemExit(f"a member diverged: {diverged[0]}")
    finally:
        sampler.close()
        for member in members:
            member.close()
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="trmrl")
    parser.add_argument("--env", default="ml1-reach")
    parser.add_argument("--seeds", type=int, default=4, help="K: runs, and population members")
    parser.add_argument("--iterations", type=int, default=1, help="learning iterations per run")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--population-only", action="store_true",
                        help="measure the population alone (its summed rate), no separate runs")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a hyperparameter or trainer setting, for both sides")
    args = parser.parse_args()
    if args.seeds < 2 or args.iterations < 1:
        parser.error("--seeds must be at least 2 and --iterations at least 1")
    overrides = cfg.parse_overrides(args.set)
    specs = [resolve(args.agent, args.env, seed, device=args.device, overrides=overrides)
             for seed in range(args.seeds)]
    hp, settings = specs[0].hyperparameters, specs[0].settings
    default_epochs = resolve(args.agent, args.env, 0, device=args.device).hyperparameters.epochs
    suite = make_suite(args.env)
    torch.set_num_threads(trainer_threads(args.device, settings.num_workers))  # as `trmrl train`
    load_before = os.getloadavg()
    print(f"{args.agent} on {args.env}: {args.seeds} seeds, {args.iterations} iteration(s) each, "
          f"{hp.trials_per_update} trials per run and iteration, epochs={hp.epochs}, "
          f"num_workers={settings.num_workers}, {available_cpus()} CPUs, {args.device}, "
          f"{torch.get_num_threads()} torch threads; load average {load_before[0]:.2f}")

    half = 0 if args.population_only else args.seeds // 2
    separate = []
    for spec in specs[:half]:
        separate.append(separate_run(spec, suite, args.iterations))
        print(f"  seed {spec.seed} alone: {separate[-1]['sample_s']:.1f} s sampling, "
              f"{separate[-1]['update_s']:.1f} s updating", flush=True)
    together = population_run([uncompiled(spec) for spec in specs], suite, args.iterations)
    print(f"  population of {args.seeds}: {together['sample_s']:.1f} s sampling, "
          f"{together['update_s']:.1f} s updating", flush=True)
    for spec in specs[half:] if not args.population_only else []:
        separate.append(separate_run(spec, suite, args.iterations))
        print(f"  seed {spec.seed} alone: {separate[-1]['sample_s']:.1f} s sampling, "
              f"{separate[-1]['update_s']:.1f} s updating", flush=True)
    load_after = os.getloadavg()
    if args.population_only:
        rate = together["env_steps"] / (together["sample_s"] + together["update_s"])
        print(f"population: {rate:,.0f} env steps/s summed over {args.seeds} members; update "
              f"{together['update_s']:.1f} s, sampling {together['sample_s']:.1f} s")
        if hp.epochs != default_epochs:
            scale = default_epochs / hp.epochs
            print(f"extrapolated to the default epochs={default_epochs}: "
                  f"{together['env_steps'] / (together['sample_s'] + scale * together['update_s']):,.0f} "
                  "env steps/s")
        print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
        return

    sums = {key: sum(run[key] for run in separate) for key in ("sample_s", "update_s", "env_steps")}
    if sums["env_steps"] != together["env_steps"]:
        print(f"  note: the runs stepped {sums['env_steps']} env steps, the population "
              f"{together['env_steps']} (episodes that end early)")

    def rate(run):
        return run["env_steps"] / (run["sample_s"] + run["update_s"])

    print(f"separate runs, one after another: {rate(sums):,.0f} env steps/s end to end; "
          f"update {sums['update_s']:.1f} s, sampling {sums['sample_s']:.1f} s")
    print(f"population:                       {rate(together):,.0f} env steps/s end to end; "
          f"update {together['update_s']:.1f} s, sampling {together['sample_s']:.1f} s")
    print(f"ratios (population over separate): end to end {rate(together) / rate(sums):.2f}x, "
          f"update {sums['update_s'] / together['update_s']:.2f}x, "
          f"sampling {sums['sample_s'] / together['sample_s']:.2f}x")
    if hp.epochs != default_epochs:  # extrapolated: every planned minibatch step runs
        scale = default_epochs / hp.epochs
        separate_s = sums["sample_s"] + scale * sums["update_s"]
        together_s = together["sample_s"] + scale * together["update_s"]
        print(f"extrapolated to the default epochs={default_epochs} (update phases x{scale:g}): "
              f"end to end {separate_s / together_s:.2f}x (separate "
              f"{sums['env_steps'] / separate_s:,.0f} env steps/s, population "
              f"{together['env_steps'] / together_s:,.0f})")
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after "
          "(1-minute; other processes on these CPUs count)")


if __name__ == "__main__":
    main()
