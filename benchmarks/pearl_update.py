"""PEARL's gradient step: time per step, eager vs one CUDA graph, and what it implies for a run.

Builds the agent with its per-env defaults (by default cheetah-vel: networks 3 x 300, encoder
3 x 200, meta-batch 16 x 256 transitions, context 100), fills every training task's replay
and encoder buffers with random transitions (no env steps), then times gradient steps: eager
on the given device and, on a GPU, replayed from the CUDA graph. It also times acting (one
lockstep step of the collection trials) and prints the implied wall time of a run of
``--run-steps`` env steps (updates + acting, without the physics). Examples:

    python benchmarks/pearl_update.py --device cpu --steps 5
    python benchmarks/pearl_update.py --device cuda --steps 2000
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from trmrl import config as cfg
from trmrl.train import build_agent, resolve
from trmrl.utils import available_cpus, format_duration


def fill_buffers(agent, per_task: int, rng: np.random.Generator) -> None:
    """``per_task`` random transitions in every task's replay buffer, and as many as fit in
    its encoder buffer."""
    width = agent.replay.width
    for task in range(len(agent.train_tasks)):
        values = torch.from_numpy(rng.normal(size=(per_task, width)).astype(np.float32))
        values[:, agent.obs_dim + agent.act_dim + 1] = 0.0  # terminated
        agent.replay.add(task, values)
        context = torch.zeros(min(per_task, agent.contexts.capacity), agent.context_width)
        context[:, :agent.context_dim] = values[:len(context), :agent.context_dim]
        agent.contexts.clear(task)
        agent.contexts.add(task, context)


def time_steps(agent, steps: int) -> float:
    """Seconds per gradient step (after a warm-up call, which also captures a graph)."""
    agent.update(min(steps, 3))
    if agent.device.type == "cuda":
        torch.cuda.synchronize(agent.device)
    began = time.perf_counter()
    agent.update(steps)  # includes drawing the iteration's indices, as in training
    if agent.device.type == "cuda":
        torch.cuda.synchronize(agent.device)
    return (time.perf_counter() - began) / steps


def time_acting(agent, rows: int, repeats: int = 200) -> float:
    """Seconds per lockstep step of ``rows`` collection trials (policy forward, sampled)."""
    z = torch.zeros(rows, agent.config.latent_dim)
    obs = np.zeros((rows, agent.obs_dim), np.float32)
    agent.policy_action(obs, z, False, agent.generator)
    began = time.perf_counter()
    for _ in range(repeats):
        agent.policy_action(obs, z, False, agent.generator)
    return (time.perf_counter() - began) / repeats


def run_shape(agent, run_steps: int) -> tuple[int, int, int]:
    """(iterations, gradient steps, lockstep acting steps) of a run of ``run_steps`` env steps
    (every episode at full length)."""
    c, H = agent.config, agent.horizon
    initial = len(agent.train_tasks) * agent.initial_episodes * H
    per_iteration = c.trials_per_update * (agent.prior_episodes + agent.posterior_episodes) * H
    iterations = 1 + max(0, -(-(run_steps - initial - per_iteration) // per_iteration))
    chunks = -(-len(agent.train_tasks) // 25)
    acting = (chunks * agent.initial_episodes * H
              + iterations * (per_iteration // c.trials_per_update))
    return iterations, iterations * c.num_train_steps_per_itr, acting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="cheetah-vel")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=None,
                        help="gradient steps to time (default: 2000 on a GPU, 5 on the CPU)")
    parser.add_argument("--run-steps", type=int, default=1_000_000)
    parser.add_argument("--fill", type=int, default=10_000, help="transitions per task")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.tf32

    torch.set_num_threads(available_cpus())
    overrides = cfg.parse_overrides(args.set)
    results = {}
    for graphs in (False, True):
        spec = resolve("pearl", args.env, 0, device=args.device,
                       overrides={**overrides, "cuda_graphs": graphs})
        if graphs and not spec.device.startswith("cuda"):
            break
        agent = build_agent(spec)
        fill_buffers(agent, args.fill, np.random.default_rng(0))
        steps = args.steps or (2000 if agent.device.type == "cuda" else 5)
        label = "CUDA graph" if agent.graphed else f"eager ({agent.device.type})"
        results[label] = (time_steps(agent, steps), agent)
    hp = spec.hyperparameters
    print(f"PEARL gradient step on {args.env}: meta-batch {hp.meta_batch} x {hp.batch_size} "
          f"transitions, context {hp.context_batch_size}, networks {list(hp.hidden)}, encoder "
          f"{list(hp.encoder_hidden)}; device {spec.device}, {torch.get_num_threads()} CPU "
          f"threads, load average {os.getloadavg()[0]:.2f}")
    agent = next(iter(results.values()))[1]
    iterations, grad_steps, acting_steps = run_shape(agent, args.run_steps)
    act_s = time_acting(agent, hp.trials_per_update)
    print(f"a {args.run_steps:,}-step run: {iterations} iterations, {grad_steps:,} gradient steps, "
          f"{acting_steps:,} lockstep acting steps ({act_s * 1e3:.2f} ms each for "
          f"{hp.trials_per_update} trials: {format_duration(acting_steps * act_s)})")
    for label, (seconds, _) in results.items():
        total = grad_steps * seconds + acting_steps * act_s
        print(f"  {label:14s} {seconds * 1e3:9.3f} ms per gradient step -> updates "
              f"{format_duration(grad_steps * seconds)}, with acting {format_duration(total)} "
              "(physics not included)")
    if len(results) == 2:
        (eager, _), (graphed, _) = results.values()
        print(f"  graph speed-up {eager / graphed:.1f}x")


if __name__ == "__main__":
    main()
