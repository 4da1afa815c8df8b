"""`trmrl evaluate`: the fast-adaptation and out-of-distribution protocols.

Both run 20 held-out tasks (``test`` split, or ``ood``) for 6 consecutive episodes with the
agent's memory kept across them and deterministic actions, and write one row per
(task, episode): ``task, task_param, episode, return, success``.

An agent whose adaptation step needs more data than one episode of the trial (MAML-TRPO's
inner step on as many episodes as meta-training gave it) runs its own protocol through
``Agent.evaluation_trials``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from trmrl.envs import NUM_EVAL_TASKS, SuiteError
from trmrl.errors import RunError
from trmrl.rundir import CONFIG, RunLock, check_writable, refuse_run_files
from trmrl.sampling import TrialSampler
from trmrl.train import load_run
from trmrl.utils import atomic_write_bytes

PROTOCOLS = {"adaptation": "test", "ood": "ood"}
EVAL_COLUMNS = ["task", "task_param", "episode", "return", "success"]
EVAL_EPISODES = 6


def evaluate(run_dir: Path | str, protocol: str, out: Path | str, device: str = "auto",
             episodes: int = EVAL_EPISODES, num_tasks: int = NUM_EVAL_TASKS,
             latents: Path | str | None = None, latent_stride: int = 10) -> np.ndarray:
    """Write the protocol's table to ``out``; returns the [tasks, episodes] returns.

    With ``latents``, also saves the agent's episodic memories (every ``latent_stride``-th
    step) as .npz with arrays memory [M, d], task [M], task_param [M], episode [M], step [M];
    agents without an episodic memory save an empty file with ``memory`` of shape [0, 0].
    """
    if protocol not in PROTOCOLS:
        raise SuiteError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
    run_dir, out = Path(run_dir), Path(out)
    outputs = [("--out", out)] + ([("--latents", Path(latents))] if latents is not None else [])
    for flag, path in outputs:  # before any work: a bad path fails now, not after the rollouts
        refuse_run_files(path, run_dir, flag)
        check_writable(path, flag)
    if latents is not None and out.resolve() == Path(latents).resolve():
        raise SuiteError(f"--out and --latents are the same file {out}; give two names")
    if not (run_dir / CONFIG).exists():
        raise RunError(f"{run_dir} is not a run directory (no config.yaml)")
    # shared: the protocols of one run may be evaluated side by side, never while it trains
    with RunLock(run_dir, shared=True):
        return _evaluate(run_dir, protocol, out, device, episodes, num_tasks,
                         None if latents is None else Path(latents), latent_stride)


def _evaluate(run_dir: Path, protocol: str, out: Path, device: str, episodes: int,
              num_tasks: int, latents: Path | None, latent_stride: int) -> np.ndarray:
    spec, agent = load_run(run_dir, device)
    suite = agent.suite
    split = PROTOCOLS[protocol]
    suite.check_split(split)
    tasks = suite.eval_tasks(split, spec.seed, num_tasks)
    if len(tasks) < num_tasks:  # an error, not a silent cap
        agent.close()
        raise SuiteError(f"--tasks {num_tasks}: the {split} split of {spec.env} has "
                         f"{len(tasks)} tasks; valid: 1..{len(tasks)}")
    hp = spec.hyperparameters
    agent.record_memory = latents is not None
    batch = None
    try:
        result = agent.evaluation_trials(tasks, episodes, hp.horizon, spec.seed + 20_000)
        if result is None:
            with TrialSampler(suite, len(tasks), horizon=hp.horizon, episodes_per_trial=episodes,
                              seed=spec.seed + 20_000) as sampler:
                batch = sampler.run(agent, tasks, deterministic=True, call=0)
            result = batch.episode_return, batch.episode_success
    finally:
        agent.close()
    if latents is not None:
        _save_latents(Path(latents), batch, tasks, latent_stride)
    episode_return, episode_success = result
    lines = [EVAL_COLUMNS]
    for task, returns, successes in zip(tasks, episode_return, episode_success):
        for episode, (ret, success) in enumerate(zip(returns, successes)):
            lines.append([task.index, f"{task.value:.6g}", episode, f"{ret:.4f}",
                          _success_cell(success)])
    out.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(str(v) for v in line) for line in lines) + "\n"
    atomic_write_bytes(out, text.encode())
    return episode_return


def _success_cell(success: float) -> str:
    """0/1 for one episode; a rate where an agent's own protocol averages several."""
    if np.isnan(success):
        return ""
    return str(int(success)) if float(success).is_integer() else f"{success:.4f}"


def _save_latents(path: Path, batch, tasks, stride: int) -> None:
    if batch is None:  # an agent's own protocol (MAML): no episodic memory, nothing to save
        empty = {"memory": np.zeros((0, 0), np.float32), "task": np.zeros(0, np.int64),
                 "task_param": np.zeros(0), "episode": np.zeros(0, np.int64),
                 "step": np.zeros(0, np.int64)}
        return _write_npz(path, empty)
    step_in_episode = np.zeros_like(batch.episode_index, dtype=np.int64)
    for n in range(batch.num_trials):  # position inside the episode, from the episode starts
        starts = np.flatnonzero(batch.episode_start[n])
        for start, end in zip(starts, [*starts[1:], batch.valid[n].sum()]):
            step_in_episode[n, start:end] = np.arange(end - start)
    keep = batch.valid & (step_in_episode % stride == 0)
    memory = batch.extras.get("memory")
    arrays = {"memory": memory[keep] if memory is not None else np.zeros((0, 0), np.float32),
              "task": np.broadcast_to(np.arange(batch.num_trials)[:, None], keep.shape)[keep],
              "task_param": np.broadcast_to(np.array([t.value for t in tasks])[:, None], keep.shape)[keep],
              "episode": batch.episode_index[keep].astype(np.int64), "step": step_in_episode[keep]}
    if memory is None:
        arrays = {k: (v if k == "memory" else v[:0]) for k, v in arrays.items()}
    _write_npz(path, arrays)


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
