"""Peak memory of a training job: CPU RSS (main process and sampler workers) and GPU memory.

Runs whole learning iterations (sampling, PPO update, a test-task evaluation) of an agent
with its default config, in this process, and prints the peaks against the 2 GiB RSS target
for MuJoCo tasks. Example:

    python benchmarks/peak_memory.py --agent trmrl --env cheetah-vel --device cpu
    python benchmarks/peak_memory.py --agent trmrl --env cheetah-vel --device cuda --set num_workers=4
"""

from __future__ import annotations

import argparse
import resource

import numpy as np
import torch

from trmrl import config as cfg
from trmrl.sampling import TrialSampler
from trmrl.train import build_agent, resolve
from trmrl.utils import available_cpus

TARGET_GIB = 2.0


def max_rss_gib(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--agent", default="trmrl")
    parser.add_argument("--env", default="cheetah-vel")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    torch.set_num_threads(available_cpus())
    spec = resolve(args.agent, args.env, 0, device=args.device, overrides=cfg.parse_overrides(args.set))
    hp = spec.hyperparameters
    before_gib = max_rss_gib(resource.RUSAGE_SELF)  # interpreter, torch, mujoco, the suite
    agent = build_agent(spec)
    sampler = TrialSampler(agent.suite, hp.trials_per_update, horizon=hp.horizon,
                           episodes_per_trial=hp.episodes_per_trial, num_workers=spec.settings.num_workers)
    eval_sampler = TrialSampler(agent.suite, hp.eval_tasks, horizon=hp.horizon,
                                episodes_per_trial=hp.episodes_per_trial)
    rng = np.random.default_rng(0)
    eval_tasks = agent.suite.eval_tasks("test", 0, hp.eval_tasks)
    steps = 0
    for _ in range(args.iterations):
        batch = sampler.run(agent, agent.suite.sample_tasks(rng, hp.trials_per_update))
        agent.update(batch)
        eval_sampler.run(agent, eval_tasks, deterministic=True)
        steps += batch.env_steps
    sampler.close()
    eval_sampler.close()  # workers are waited for, so RUSAGE_CHILDREN now covers them

    main_gib = max_rss_gib(resource.RUSAGE_SELF)
    workers_gib = max_rss_gib(resource.RUSAGE_CHILDREN)  # the largest worker, not their sum
    print(f"{args.agent} on {args.env}, device {spec.device}, workers={spec.settings.num_workers}, "
          f"{hp.trials_per_update} trials/update, {args.iterations} iterations ({steps:,} env steps)")
    print(f"  peak RSS, main process: {main_gib:.2f} GiB ({before_gib:.2f} GiB before the agent "
          f"was built); target <= {TARGET_GIB} GiB: {'met' if main_gib <= TARGET_GIB else 'MISSED'}")
    if spec.settings.num_workers:
        total = main_gib + spec.settings.num_workers * workers_gib
        print(f"  largest worker: {workers_gib:.2f} GiB; main + {spec.settings.num_workers} workers "
              f"<= {total:.2f} GiB (upper bound: shared pages are counted in each)")
    if spec.device.startswith("cuda"):
        print(f"  GPU: peak allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"peak reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
