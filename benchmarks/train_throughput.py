"""End-to-end training throughput of an agent with its paper config (issue: performance).

Prints env steps/s of whole learning iterations, split into sampling (env + acting) and the
PPO update, and the wall time this implies for the paper budget. Example:

    python benchmarks/train_throughput.py --agent trmrl --env cheetah-vel --device cuda
    python benchmarks/train_throughput.py --device cuda --set cuda_graphs=false   # eager
    python benchmarks/train_throughput.py --agent rl2 --device cpu --record cpu-2core  # + a row
                                                                          # of benchmarks/rates.csv
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time

import numpy as np
import torch

from trmrl import config as cfg
from trmrl import plan
from trmrl.sampling import TrialSampler
from trmrl.train import build_agent, resolve
from trmrl.utils import available_cpus, format_duration, trainer_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="trmrl")
    parser.add_argument("--env", default="cheetah-vel")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations after one warm-up")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="then profile one more update and print its top ROWS ops by device time")
    parser.add_argument("--record", default=None, metavar="MACHINE_KIND",
                        help="append the end-to-end rate to the rates table of the cost plan "
                        "(`trmrl plan`) as measured on this machine kind, e.g. cpu-2core")
    parser.add_argument("--rates", default=str(plan.DEFAULT_RATES), metavar="FILE.csv",
                        help="the rates table --record appends to")
    parser.add_argument("--note", default="", help="--record: conditions worth knowing "
                        "(the load averages are added)")
    args = parser.parse_args()
    if args.record is not None and not plan.MACHINE_PATTERN.fullmatch(args.record):
        parser.error(f"--record {args.record!r}: a machine kind is lowercase letters, digits, "
                     "'.', '+' and '-', e.g. h200-16core")
    if args.record is not None:
        other = [key for key in cfg.parse_overrides(args.set) if key not in plan.SPEED_KEYS]
        if other:
            parser.error(f"--record measures an agent's defaults, but --set changes {', '.join(other)}; "
                         f"only {', '.join(plan.SPEED_KEYS)} may be set")
    load_before = os.getloadavg()[0]

    torch.set_num_threads(available_cpus())
    spec = resolve(args.agent, args.env, 0, device=args.device, overrides=cfg.parse_overrides(args.set))
    hp, settings = spec.hyperparameters, spec.settings
    agent = build_agent(spec)
    sampler = TrialSampler(agent.suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial, num_workers=settings.num_workers,
                           pipeline=settings.pipeline_sampling)
    torch.set_num_threads(trainer_threads(spec.device, settings.num_workers))  # as training does
    rng = np.random.default_rng(0)
    sample_s = update_s = steps = lockstep_steps = minibatch_steps = 0.0
    for iteration in range(args.iterations + 1):
        tasks = agent.suite.sample_tasks(rng, hp.trials_per_update)
        if iteration == 1:  # the first iteration pays for warm-up and graph capture
            sampler.timings = dict.fromkeys(sampler.timings, 0.0)
        t0 = time.perf_counter()
        batch = sampler.run(agent, tasks)
        t1 = time.perf_counter()
        metrics = agent.update(batch)
        if spec.device.startswith("cuda"):
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if iteration > 0:
            sample_s, update_s, steps = sample_s + t1 - t0, update_s + t2 - t1, steps + batch.env_steps
            lockstep_steps += batch.valid.shape[1] * -(-batch.num_trials // hp.trials_per_update)
            minibatch_steps += metrics.get("minibatch_steps", 0)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if spec.device.startswith("cuda") else [])
        batch = sampler.run(agent, agent.suite.sample_tasks(rng, hp.trials_per_update))
        with profile(activities=activities) as profiler:  # the update only: thousands of
            agent.update(batch)  # acting steps make a profile too slow to collect
            if spec.device.startswith("cuda"):
                torch.cuda.synchronize()
        sort = "cuda_time_total" if spec.device.startswith("cuda") else "cpu_time_total"
        print(profiler.key_averages().table(sort_by=sort, row_limit=args.profile))
    sampler.close()
    total = sample_s + update_s
    rate = steps / total
    timings = sampler.timings
    device = torch.cuda.get_device_name() if spec.device.startswith("cuda") else f"{available_cpus()} CPU threads"
    print(f"{args.agent} on {args.env}, {device}, graphs={getattr(settings, 'cuda_graphs', None)}, "
          f"compile={getattr(settings, 'torch_compile', None)}, workers={settings.num_workers}, "
          f"pipeline={sampler.pipeline}, {hp.trials_per_update} trials/update")
    print(f"  {rate:,.0f} env steps/s end to end ({steps:,.0f} steps in {total:.2f} s)")
    print(f"  sampling {steps / sample_s:,.0f} steps/s ({100 * sample_s / total:.0f}% of the time), "
          f"update {100 * update_s / total:.0f}%")
    per_step = 1e3 / lockstep_steps
    print(f"  per lockstep step ({hp.trials_per_update} envs): policy {timings['policy'] * per_step:.3f} ms, "
          f"envs {timings['envs'] * per_step:.3f} ms, sampler bookkeeping "
          f"{(timings['total'] - timings['policy'] - timings['envs']) * per_step:.3f} ms")
    if minibatch_steps:
        print(f"  update: {minibatch_steps / args.iterations:.0f} minibatch steps per iteration, "
              f"{1e3 * update_s / minibatch_steps:.2f} ms each (GAE and input building included)")
    print(f"  paper budget {settings.steps:,} steps -> {format_duration(settings.steps / rate)} at this rate"
          + (" (an upper bound: in whole runs target_kl shortens most updates; a run's own rate"
             " is env_steps / wall_s of its metrics.csv)" if getattr(hp, "target_kl", 0) else ""))
    if args.record is not None:
        # the first iterations only: a whole run's rate also pays for evaluations and, with
        # target_kl, has shorter updates later on
        note = (f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after; "
                f"{args.iterations} iterations after one warm-up" + (f"; {args.note}" if args.note else ""))
        plan.append_rate(args.rates, plan.Rate(
            machine=args.record, agent=args.agent, env=args.env,
            defaults_version=spec.defaults_version, device=f"{spec.device.split(':')[0]} ({device})",
            env_steps_per_s=rate, measured="first iterations",
            command=shlex.join(["python", "benchmarks/train_throughput.py", *sys.argv[1:]]),
            date=datetime.date.today().isoformat(), note=note))
        print(f"  recorded in {args.rates} for machine kind {args.record}")


if __name__ == "__main__":
    main()
