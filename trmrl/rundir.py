"""What keeps a run directory whole: one lock per directory, output paths checked before any
work starts, and checkpoints that load without running code.

The lock is ``fcntl.flock`` on RUN_DIR/.lock: the kernel releases it when its holder exits,
however it dies, so a killed run never leaves a directory locked. ``trmrl train`` holds it
exclusively; ``trmrl evaluate`` holds it shared (the workflow evaluates a run's protocols side
by side, never while it trains). Where flock does not reach other hosts (NFS mounted with
``local_lock=flock`` or ``nolock``, some FUSE file systems) it only excludes processes of the
same host.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trmrl.errors import RunError, UserError

CONFIG, PROGRESS, METRICS, CHECKPOINT = "config.yaml", "progress.csv", "metrics.csv", "checkpoint.pt"
RUN_FILES = (CONFIG, PROGRESS, METRICS, CHECKPOINT)
LOCK = ".lock"
# what a killed run may leave in a directory before its first config.yaml: such a directory
# is still a fresh one (atomic writes go through <name>.tmp)
LEFTOVERS = (LOCK, *(name + ".tmp" for name in RUN_FILES))


class RunLock:
    """``with RunLock(run_dir, shared=False):`` holds the run directory's lock, or raises
    RunError naming the process (pid, host) that holds it."""

    def __init__(self, run_dir: Path, shared: bool = False):
        self.path, self.shared = Path(run_dir) / LOCK, shared
        self.handle = None

    def __enter__(self) -> "RunLock":
        try:
            # a+ : never truncates what a holder wrote before we know we hold the lock
            handle = open(self.path, "a+")
        except OSError as error:
            if self.shared and error.errno in (errno.EROFS, errno.EACCES):
                return self  # a read-only run directory: no train can write to it either
            raise RunError(f"cannot open the lock file {self.path}: {error.strerror}") from None
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as error:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"{self.path.parent} is in use by {holder} (a train or evaluate "
                               "of this run); wait for it to end or use another directory") from None
            raise RunError(f"cannot lock {self.path} ({error.strerror}); this file system "
                           "does not support flock") from None
        # the latest holder names itself (evaluations holding it shared: one of them)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on host {socket.gethostname()}\n")
        handle.flush()
        self.handle = handle
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the last descriptor releases the flock
            self.handle = None


def check_writable(path: Path, what: str) -> None:
    """``path`` can be created as a file: it is not a directory, and its nearest existing
    ancestor is a writable directory (not a file, not a read-only mount). Creates nothing."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory; give a file name")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    _check_dir_writable(ancestor, what, path)


def check_dir_writable(path: Path, what: str) -> None:
    """``path`` is a directory, or can be created as one, and files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file, not a directory")
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    _check_dir_writable(ancestor, what, path)


def _check_dir_writable(directory: Path, what: str, path: Path) -> None:
    if not directory.is_dir():
        raise UserError(f"{what} {path} lies under {directory}, which is a file")
    # os.access reports read-only mounts (EROFS) and missing permissions alike
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {directory} is not writable")


def refuse_run_files(path: Path, run_dir: Path, what: str) -> None:
    """An output must never replace a file that a run directory keeps for itself."""
    target = Path(path).resolve()
    run = Path(run_dir).resolve()
    own = {run / name for name in (*RUN_FILES, *LEFTOVERS)}
    if target == run or target in own:
        raise UserError(f"{what} {path} would overwrite the run's own {target.name}; choose a "
                        f"file outside {', '.join(RUN_FILES)} (e.g. {run_dir}/eval/<name>)")


def is_fresh(run_dir: Path) -> bool:
    """A directory that does not exist, is empty, or holds only our own leftovers."""
    if not run_dir.exists():
        return True
    return all(entry.name in LEFTOVERS for entry in run_dir.iterdir())


def remove_leftovers(run_dir: Path) -> None:
    """The temporary files a killed atomic write left behind (never the lock: we hold it)."""
    for name in LEFTOVERS:
        if name != LOCK:
            (run_dir / name).unlink(missing_ok=True)


# numpy arrays in agent states (PEARL's replay bookkeeping): rebuilt from their raw bytes,
# nothing else is called. torch.load(weights_only=True) refuses every other global.
_NUMPY_GLOBALS = [np._core.multiarray._reconstruct, np.ndarray, np.dtype,
                  np._core.multiarray.scalar,
                  *(getattr(np.dtypes, name) for name in dir(np.dtypes) if name.endswith("DType"))]


def load_checkpoint_file(path: Path) -> Any:
    """A checkpoint's content, unpickled with only tensors, plain Python types and numpy
    arrays allowed: a crafted file cannot run code (it fails to load instead)."""
    with torch.serialization.safe_globals(_NUMPY_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True)
