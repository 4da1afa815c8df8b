"""`trmrl evaluate`: the fast-adaptation and out-of-distribution protocols.

Both run 20 held-out tasks (``test`` split, or ``ood``) for 6 consecutive episodes with the
agent's memory kept across them and deterministic actions, and write one row per
(task, episode): ``task, task_param, episode, return, success``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from trmrl.envs import NUM_EVAL_TASKS, SuiteError
from trmrl.sampling import TrialSampler
from trmrl.train import load_run
from trmrl.utils import atomic_write_bytes

PROTOCOLS = {"adaptation": "test", "ood": "ood"}
EVAL_COLUMNS = ["task", "task_param", "episode", "return", "success"]
EVAL_EPISODES = 6


def evaluate(run_dir: Path | str, protocol: str, out: Path | str, device: str = "auto",
             episodes: int = EVAL_EPISODES, num_tasks: int = NUM_EVAL_TASKS) -> np.ndarray:
    """Write the protocol's table to ``out``; returns the [tasks, episodes] returns."""
    if protocol not in PROTOCOLS:
        raise SuiteError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    spec, agent = load_run(run_dir, device)
    suite = agent.suite
    split = PROTOCOLS[protocol]
    suite.check_split(split)
    tasks = suite.eval_tasks(split, spec.seed, num_tasks)
    hp = spec.hyperparameters
    with TrialSampler(suite, len(tasks), horizon=hp.horizon, episodes_per_trial=episodes,
                      seed=spec.seed + 20_000) as sampler:
        batch = sampler.run(agent, tasks, deterministic=True, call=0)
    lines = [EVAL_COLUMNS]
    for task, returns, successes in zip(tasks, batch.episode_return, batch.episode_success):
        for episode, (ret, success) in enumerate(zip(returns, successes)):
            lines.append([task.index, f"{task.value:.6g}", episode, f"{ret:.4f}",
                          "" if np.isnan(success) else int(success)])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(str(v) for v in line) for line in lines) + "\n"
    atomic_write_bytes(out, text.encode())
    return batch.episode_return
