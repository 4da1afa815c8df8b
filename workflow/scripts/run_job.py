"""Runs one train or evaluate job of the workflow on resources of its own.

    python run_job.py --threads 4 [--pin] [--gpus all|0,1 --jobs-per-gpu 2]
                      [--log FILE [--attempt N]] -- trmrl train ...

Local runs (`--pin`, `--gpus`): the job first takes a GPU slot, one of `jobs_per_gpu` per GPU
of `gpus`, on the GPU with the fewest jobs, and runs with CUDA_VISIBLE_DEVICES set to that GPU;
then `threads` CPUs that no other job holds, and runs with its CPU affinity set to them. Each
slot and each CPU is an exclusive `flock` on a file of its own under `.snakemake/slots/`, taken
by this process and passed on to the job's: the kernel releases it once both have ended,
however they end (exit, crash, SIGKILL, Ctrl-C of snakemake). A job that finds no free
slot or not enough free CPUs waits; its log says so. On a cluster the workflow passes neither
option: SLURM gives each job its GPUs and CPUs.

`--log`: the job's output goes to FILE, after one line saying what the job holds.
`--attempt` (train jobs): snakemake's attempt number under --retries. Retries are for jobs that
were killed (cancelled, preempted, timed out: the run resumes from its checkpoint); a real error
(exit 1: the run diverged or crashed, 2: bad input) is kept in FILE.failed, and the later
attempts of this snakemake invocation stop at once with that log instead of repeating it.

The job's own exit status is this script's, 128 + N where signal N killed it; errors of this
script (a GPU id the machine lacks) are one line on stderr (and in the log) and exit status 2.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SLOTS_DIR = Path(".snakemake") / "slots"  # relative to the workflow's working directory
POLL_S = 0.5  # how often a waiting job looks for a free slot again
NOT_RETRIED = ("not retried: an earlier attempt failed with this error, not a kill by the "
               "cluster; fix it and run snakemake again")
HINT_EXIT_2 = ("hint: a run directory keeps its hyperparameters; to retrain with new ones, "
               "bump train_revision in the config")


class SlotError(Exception):
    """A bad `gpus` / `jobs_per_gpu` value: the message is one line naming the key."""


# ---------------------------------------------------------------------------------------
# GPUs
# ---------------------------------------------------------------------------------------
def parse_gpus(value) -> str | list[int]:
    """`all`, a list of ids, one id, or ids as `--config gpus=0,1` gives them ("0,1") -> "all"
    or [0, 1]; a repeated id is an error."""
    if value == "all":
        return "all"
    if isinstance(value, int):
        value = [value]
    if isinstance(value, str):
        if not re.fullmatch(r"\d+(,\d+)*", value):
            raise SlotError(f"invalid config at `gpus`: {value!r} is neither `all` nor a list "
                            "of GPU ids such as 0,1")
        value = [int(part) for part in value.split(",")]
    repeated = sorted({gpu for gpu in value if value.count(gpu) > 1})
    if repeated:
        raise SlotError(f"invalid config at `gpus`: GPU {repeated[0]} is listed twice in "
                        f"{value}; each GPU once, `jobs_per_gpu` sets how many jobs share it")
    return list(value)


def nvidia_smi_count() -> int | None:
    """GPUs of this machine as `nvidia-smi -L` lists them; None without nvidia-smi."""
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        result = subprocess.run([executable, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:  # e.g. no driver loaded: no GPU usable
        return 0
    return sum(1 for line in result.stdout.splitlines() if line.startswith("GPU "))


def cuda_device_count() -> int | None:
    """CUDA's device count through the driver library, where there is no nvidia-smi (some
    containers); None without a CUDA driver. Cheaper than importing torch."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def machine_gpus() -> tuple[list[str] | None, str]:
    """(the GPUs a job can be given, as CUDA_VISIBLE_DEVICES entries, and where that list comes
    from); None where nothing tells. Inside an allocation that already set
    CUDA_VISIBLE_DEVICES (salloc), only those GPUs are this workflow's."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [entry.strip() for entry in visible.split(",") if entry.strip()], \
            f"CUDA_VISIBLE_DEVICES={visible}"
    count = nvidia_smi_count()
    if count is not None:
        return [str(i) for i in range(count)], "`nvidia-smi -L`"
    count = cuda_device_count()
    if count is not None:
        return [str(i) for i in range(count)], "CUDA"
    return None, "no nvidia-smi and no CUDA driver"


def resolve_gpus(value) -> list[str]:
    """The CUDA_VISIBLE_DEVICES entries of `gpus`: `all` is every GPU found (none: []); an id
    counts from 0 over the GPUs found, and one the machine lacks is an error where the machine
    tells (nvidia-smi, or CUDA_VISIBLE_DEVICES already set); elsewhere ids are taken as given."""
    gpus = parse_gpus(value)
    found, source = machine_gpus()
    if gpus == "all":
        return found or []
    if found is None or source == "CUDA":
        return [str(gpu) for gpu in gpus]
    missing = [gpu for gpu in gpus if gpu >= len(found)]
    if missing:
        listed = f"GPUs 0-{len(found) - 1}" if found else "no GPU"
        raise SlotError(f"invalid config at `gpus`: GPU {missing[0]} is not on this machine; "
                        f"{source} shows {listed}")
    return [found[gpu] for gpu in gpus]


# ---------------------------------------------------------------------------------------
# CPUs
# ---------------------------------------------------------------------------------------
def cpu_order(allowed: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """The CPUs in the order jobs take them: the first hardware thread of every core, then the
    second ones, so that jobs share no physical core while there are cores to spare."""
    def thread_rank(cpu):
        siblings = sysfs / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        try:
            first = re.split(r"[-,]", siblings.read_text().strip())[0]
        except OSError:
            return 0
        return 0 if int(first) == cpu else 1
    return sorted(allowed, key=lambda cpu: (thread_rank(cpu), cpu))


def cpu_list(cpus) -> str:
    """[0, 1, 2, 5] -> "0-2,5"."""
    ranges, cpus = [], sorted(cpus)
    for cpu in cpus:
        if ranges and cpu == ranges[-1][1] + 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in ranges)


# ---------------------------------------------------------------------------------------
# Slots: one lock file each
# ---------------------------------------------------------------------------------------
class Slots:
    """Exclusive flocks on files under ``directory``: `gpu<id>.slot<k>.lock` and
    `cpu<n>.lock`, each naming the job that holds it (or held it last). One more lock
    (`allocate.lock`) makes each job's look-and-take atomic, so that two jobs never take half
    of each other's CPUs and wait forever."""

    def __init__(self, directory: Path, owner: str):
        self.directory = directory
        self.owner = owner  # written into the held files: `cat` tells who holds a slot
        self.held: list[int] = []  # file descriptors, passed on to the job

    def _try(self, name: str) -> int | None:
        fd = os.open(self.directory / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def _keep(self, fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.owner}\n".encode(), 0)
        self.held.append(fd)

    def _allocating(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "allocate.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for a look at the files, never while waiting
        return fd

    def try_gpu(self, gpus: list[str], per_gpu: int) -> tuple[str, int] | None:
        """A free slot on the GPU with the fewest jobs (the earlier one on a tie), taken."""
        lock = self._allocating()
        try:
            free = {}  # gpu -> [(slot, fd)] of its free slots, locked by this look
            for gpu in gpus:
                name = re.sub(r"[^A-Za-z0-9_.-]", "_", gpu)
                free[gpu] = [(k, fd) for k in range(per_gpu)
                             if (fd := self._try(f"gpu{name}.slot{k}.lock")) is not None]
            best = max(gpus, key=lambda gpu: len(free[gpu]))  # max() keeps the first on a tie
            taken = None
            if free[best]:
                taken = (best, free[best][0][0])
                self._keep(free[best].pop(0)[1])
            for slots in free.values():
                for _, fd in slots:
                    os.close(fd)
            return taken
        finally:
            os.close(lock)

    def try_cpus(self, count: int, order: list[int]) -> list[int] | None:
        """``count`` free CPUs (the first in ``order``), taken, or None (nothing taken)."""
        lock = self._allocating()
        try:
            taken = []
            for cpu in order:
                fd = self._try(f"cpu{cpu}.lock")
                if fd is not None:
                    taken.append((cpu, fd))
                    if len(taken) == count:
                        break
            if len(taken) < count:
                for _, fd in taken:
                    os.close(fd)
                return None
            for _, fd in taken:
                self._keep(fd)
            return sorted(cpu for cpu, _ in taken)
        finally:
            os.close(lock)


def wait_for(take, say_waiting):
    """``take()`` until it gives something, saying once that the job waits."""
    while (got := take()) is None:
        if say_waiting:
            say_waiting()
            say_waiting = None
        time.sleep(POLL_S)
    return got


# ---------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, required=True,
                        help="the job's CPUs: OMP_NUM_THREADS, and with --pin the CPUs it holds")
    parser.add_argument("--pin", action="store_true",
                        help="hold --threads CPUs of this machine and run on them (local runs)")
    parser.add_argument("--gpus", default=None,
                        help="all | ids (0,1): hold a GPU slot on one of them (local runs)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1)
    parser.add_argument("--slots", type=Path, default=SLOTS_DIR, help="where the lock files are")
    parser.add_argument("--log", type=Path, default=None, help="the job's output goes here")
    parser.add_argument("--attempt", type=int, default=None,
                        help="snakemake's attempt (train jobs): a real error is not retried")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args(argv)
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("no command given after --")
    if args.threads < 1 or args.jobs_per_gpu < 1:
        parser.error("--threads and --jobs-per-gpu are at least 1")
    return args


class Output:
    """Where this script's own lines go: the job's log (when given) and stderr for errors."""

    def __init__(self, log: Path | None):
        self.log = log
        if log is not None:
            log.write_text("")
        # appending: the job's output (on the same open file) and this script's lines that
        # follow it both go to the end
        self.stream = open(log, "a") if log is not None else sys.stdout

    def say(self, line: str) -> None:
        self.stream.write(f"{line}\n")
        self.stream.flush()


def previous_failure(log: Path, attempt: int) -> bool:
    """Train jobs under --retries: True when an earlier attempt failed for real (its log is
    then this attempt's, with why it is not run again)."""
    failed = Path(f"{log}.failed")
    if attempt == 1:
        failed.unlink(missing_ok=True)
        return False
    if not failed.exists():
        return False
    log.write_text(failed.read_text() + NOT_RETRIED + "\n")
    return True


def hold_resources(args, slots: Slots, out: Output) -> dict[str, str]:
    """Take the job's GPU slot and CPUs; the environment variables that put the job on them."""
    env = {"OMP_NUM_THREADS": str(args.threads)}  # sizes torch's thread pool (default: all cores)
    held = []
    if args.gpus is not None:
        gpus = resolve_gpus(args.gpus)
        if gpus:
            gpu, slot = wait_for(
                lambda: slots.try_gpu(gpus, args.jobs_per_gpu),
                lambda: out.say(f"run_job: waiting for a GPU slot (all {args.jobs_per_gpu} "
                                f"of each of GPUs {', '.join(gpus)} are taken)"))
            env["CUDA_VISIBLE_DEVICES"] = gpu
            # ids count as nvidia-smi lists the GPUs (CUDA's default order is fastest first)
            env["CUDA_DEVICE_ORDER"] = os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
            held.append(f"GPU {gpu} (slot {slot + 1} of {args.jobs_per_gpu})")
    if args.pin:
        allowed = os.sched_getaffinity(0)
        count = min(args.threads, len(allowed))  # more than the machine has: all of them
        cpus = wait_for(
            lambda: slots.try_cpus(count, cpu_order(allowed)),
            lambda: out.say(f"run_job: waiting for {count} free CPUs of {cpu_list(allowed)}"))
        try:
            os.sched_setaffinity(0, cpus)  # the job and its sampler workers inherit it
        except OSError as error:  # not allowed here (some containers): CPUs held, unpinned
            out.say(f"run_job: cannot pin the job to CPUs {cpu_list(cpus)}: {error}")
        env["OMP_NUM_THREADS"] = str(len(cpus))
        held.append(f"CPUs {cpu_list(cpus)}")
    if held:
        out.say(f"run_job: holds {', '.join(held)}")
    return env


def run(args, env: dict[str, str], out: Output, held_fds: list[int]) -> int:
    """The job, with ``env``, holding ``held_fds`` too (a kill of this script alone leaves
    its slots held until the job ends); its exit status as a shell gives it."""
    # after the start, Ctrl-C is the job's to handle (it is in this process group and gets it
    # too); a handler, not SIG_IGN, since the job would inherit an ignored signal
    signal.signal(signal.SIGINT, lambda signum, frame: None)
    stdout = out.stream if out.log is not None else None
    try:
        job = subprocess.Popen(args.command, env={**os.environ, **env}, stdout=stdout,
                               stderr=subprocess.STDOUT if stdout else None, pass_fds=held_fds)
    except OSError as error:  # e.g. `trmrl` not installed: as a shell says it
        out.say(f"run_job: cannot run {args.command[0]}: {error.strerror}")
        return 127
    # SIGTERM to this script alone (a timeout, kill PID) reaches the job; sent to the whole
    # group it reaches the job twice, which `trmrl train` takes as once
    signal.signal(signal.SIGTERM, lambda signum, frame: job.send_signal(signum))
    status = job.wait()
    return 128 - status if status < 0 else status


def refused_for_hyperparameters(log: str | None) -> bool:
    """Whether `trmrl train` refused a run directory trained with other hyperparameters (the
    case the train_revision hint is for; a held lock or a bad path is not)."""
    if log is None or not os.path.exists(log):
        return False
    with open(log, errors="replace") as handle:
        return "trained with other hyperparameters" in handle.read()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.log is not None and args.attempt is not None and previous_failure(args.log,
                                                                              args.attempt):
        return 1
    out = Output(args.log)
    slots = Slots(args.slots, owner=f"pid {os.getpid()}: {args.log or ' '.join(args.command)}")
    try:
        env = hold_resources(args, slots, out)
    except SlotError as error:
        print(error, file=sys.stderr)
        if args.log is not None:
            out.say(str(error))
        status = 2
    except KeyboardInterrupt:  # Ctrl-C while waiting for a slot
        return 130
    else:
        status = run(args, env, out, slots.held)
        if status == 2 and args.attempt is not None and refused_for_hyperparameters(args.log):
            out.say(HINT_EXIT_2)
    if args.log is not None and args.attempt is not None and 0 < status <= 2:
        shutil.copyfile(args.log, f"{args.log}.failed")
    return status


if __name__ == "__main__":
    sys.exit(main())
