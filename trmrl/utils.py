"""Small helpers shared by the command line, training and evaluation."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def available_cpus() -> int:
    """CPUs this process may use: OMP_NUM_THREADS if set, else the SLURM allocation or the
    CPU affinity, never the whole node (jobs sharing a node must not oversubscribe it)."""
    omp = os.environ.get("OMP_NUM_THREADS")
    if omp and omp.isdigit():
        return max(1, int(omp))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK")
    if slurm and slurm.isdigit():
        return max(1, int(slurm))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


def trainer_threads(device: str, num_workers: int) -> int:
    """Torch CPU threads of a training process: every available CPU, except on a GPU with
    sampler workers, where the workers get the CPUs. The trainer's CPU work is light there,
    and its OpenMP threads, spinning between parallel regions, would take the workers'
    cores (an oversubscribed 16-CPU box stepped 512 envs ~2.7x slower)."""
    cpus = available_cpus()
    if device.startswith("cuda") and num_workers > 0:
        return max(1, cpus - num_workers)
    return cpus


def git_commit() -> str:
    """The commit of the package's checkout ('unknown' when not in a git checkout)."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a kill by KeyboardInterrupt: leave no half file
        tmp.unlink(missing_ok=True)
        raise


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
