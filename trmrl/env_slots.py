"""Env slots stepped in lockstep, in this process or in shared-memory worker processes.

The trial sampler (:mod:`trmrl.sampling`) keeps one env slot per running trial. Each step it
writes every slot's action into a :class:`SlotArrays` block and asks the slots to step; they
write back observations, rewards and flags, and start the trial's next episode themselves
when one ends, so that one step is one round trip, resets included.

* :class:`LocalSlots` steps every slot in the calling process.
* :class:`WorkerSlots` gives each worker process a contiguous range of slots. The
  :class:`SlotArrays` block lives in shared memory (``multiprocessing.RawArray``: its backing
  file is unlinked as soon as it is mapped, so no segment can outlive the processes). A step
  costs one semaphore post and one semaphore wait per worker; nothing is pickled per step,
  only the tasks of a new round travel through a pipe. Where the workers leave a CPU
  spare, both sides poll their semaphore for up to ``SPIN_S`` before they sleep on it.
* With ``groups=2`` the slots form two halves, rows ``[0, h)`` and ``[h, n)``, and each
  worker holds a range of each: the halves step separately, so that the sampler can act
  for one half while the workers step the other (see ``TrialSampler(pipeline=True)``).
  A sampler of K members (a population) gets halves of ``K * ceil(P / 2)`` and
  ``K * floor(P / 2)`` slots for its P slots per member, so that either half can hold the
  same number of trials of every member.

Each round, the sampler tells every slot what to run (a :class:`SlotTrial`: the task, and the
seed and trial index its reset seeds come from) or leaves it idle.

Both run the same :class:`EnvSlots` code on their rows, which is why the results do not
depend on the number of workers.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import time
import traceback
import weakref
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from trmrl.envs.base import EnvStepError, Task, TaskSuite
from trmrl.utils import available_cpus

POLL_S = 1.0  # how often a blocked wait checks that the process on the other side still lives
STARTUP_TIMEOUT_S = 600.0  # building envs can be slow (ML45 builds its benchmark), not endless
# how long a wait polls before it sleeps: waking a sleeping process costs tens of µs, paid
# twice per lockstep step, while the other side's turn (an acting step, a few envs' physics)
# is often shorter than this
SPIN_S = 0.001

# what a woken worker does, read from SlotArrays.command
STEP, ROUND, CLOSE = 1, 2, 3


class SamplerError(RuntimeError):
    """An env failed, or a worker died, while sampling; the message names worker and slot."""


def reset_seed(seed: int, call: int, trial: int, episode: int) -> int:
    """The reset seed of one episode: a function of these four numbers only."""
    return int(np.random.SeedSequence([seed, call, trial, episode]).generate_state(1)[0])


class SlotTrial(NamedTuple):
    """What one slot runs in a round: a trial of ``task`` whose episodes reset with
    ``reset_seed(seed, call, trial, episode)``."""

    task: Task
    seed: int  # the sampler's seed, or its member's in a population
    trial: int  # the trial's index among its seed's trials of the call


# ---------------------------------------------------------------------------------------
# The per-slot state of one step: named numpy views into one flat buffer
# ---------------------------------------------------------------------------------------
def _fields(n: int, obs_dim: int, act_dim: int, num_workers: int):
    return [("action", (n, act_dim), np.float32), ("obs", (n, obs_dim), np.float32),
            ("next_obs", (n, obs_dim), np.float32), ("reward", (n,), np.float64),
            ("terminated", (n,), np.bool_), ("truncated", (n,), np.bool_),
            ("success", (n,), np.float32), ("episode_start", (n,), np.bool_),
            ("active", (n,), np.bool_), ("episode", (n,), np.int64),
            # per worker: a ring of the commands it runs when woken (two may be in flight, one
            # per group of slots), the group each is for, and how many of its commands failed
            ("command", (num_workers, 2), np.int32), ("group", (num_workers, 2), np.int32),
            ("failed", (num_workers,), np.int32)]


def _layout(*args) -> tuple[list, int]:
    offsets, size = [], 0
    for name, shape, dtype in _fields(*args):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        offsets.append((name, shape, dtype, size, nbytes))
        size += -(-nbytes // 64) * 64  # each field starts on its own cache line
    return offsets, max(size, 64)


class SlotArrays:
    """Per-slot arrays of one lockstep step (a row per env slot).

    The sampler writes ``action`` and ``command``; the slots write the rest. ``obs``,
    ``episode_start`` and ``episode`` describe the step to take next; ``next_obs`` to
    ``success`` the step just taken (``next_obs`` is the obs *before* a reset). ``active`` turns
    False once a slot's trial has run all its episodes.
    """

    def __init__(self, num_slots: int, obs_dim: int, act_dim: int, num_workers: int = 0,
                 buffer=None):
        self.args = (num_slots, obs_dim, act_dim, num_workers)
        fields, self.nbytes = _layout(*self.args)
        self.buffer = bytearray(self.nbytes) if buffer is None else buffer
        flat = np.frombuffer(self.buffer, np.uint8, count=self.nbytes)
        for name, shape, dtype, offset, nbytes in fields:
            setattr(self, name, flat[offset:offset + nbytes].view(dtype).reshape(shape))

    @classmethod
    def shared(cls, context, *args) -> SlotArrays:
        """The same arrays in shared memory; pass ``buffer`` and ``args`` to a worker."""
        return cls(*args, buffer=context.RawArray(ctypes.c_uint8, _layout(*args)[1]))


# ---------------------------------------------------------------------------------------
# A range of slots and their envs: the code that runs in a worker (or in-process)
# ---------------------------------------------------------------------------------------
class EnvSlots:
    """Slots ``lo..hi-1`` of a sampler: steps the live ones and starts their next episodes."""

    def __init__(self, suite: TaskSuite, arrays: SlotArrays, lo: int, hi: int, horizon: int,
                 episodes_per_trial: int):
        self.lo, self.horizon, self.episodes_per_trial = lo, horizon, episodes_per_trial
        self.suite = suite
        self.envs = [suite.make_env() for _ in range(hi - lo)]
        rows = slice(lo, hi)
        for name in ("action", "obs", "next_obs", "reward", "terminated", "truncated", "success",
                     "episode_start", "active", "episode"):
            setattr(self, name, getattr(arrays, name)[rows])
        self.step_in_episode = np.zeros(hi - lo, np.int64)
        self.trials: list[SlotTrial | None] = [None] * (hi - lo)  # this round's, per slot
        self.call = 0

    def start_round(self, trials: list[SlotTrial | None], call: int) -> None:
        """Set each slot to its trial (``trials[i]`` for slot ``lo + i``) and reset it; a
        slot given None idles this round."""
        if len(trials) != len(self.envs):
            raise ValueError(f"{len(trials)} trials for {len(self.envs)} env slots")
        self.call = call
        self.trials = list(trials)
        self.active[:] = [trial is not None for trial in trials]
        self.episode[:] = 0
        self.episode_start[:] = True
        self.step_in_episode[:] = 0
        started = np.flatnonzero(self.active)
        obs = []
        for i in started.tolist():
            try:
                self.envs[i].set_task(trials[i].task)
                obs.append(self._reset(i, 0))
            except Exception as error:
                raise self._error(i, "set_task/reset", error) from error
        if obs:
            self.obs[started] = np.stack(obs)

    def _reset(self, i: int, episode: int) -> np.ndarray:
        trial = self.trials[i]
        return self.envs[i].reset(seed=reset_seed(trial.seed, self.call, trial.trial, episode))[0]

    def step(self) -> None:
        live = np.flatnonzero(self.active)
        if not live.size:
            return
        all_live = live.size == len(self.envs)
        rows = slice(None) if all_live else live  # a slice is the cheaper index
        envs = self.envs if all_live else [self.envs[i] for i in live.tolist()]
        try:
            next_obs, reward, terminated, success = self.suite.step_batch(envs, self.action[rows])
        except EnvStepError as error:
            raise self._error(int(live[error.index]), "step", error.__cause__) from error.__cause__
        except Exception as error:  # not one env's: the suite's batch code
            raise self._error(None, "step", error) from error

        self.next_obs[rows] = next_obs
        self.reward[rows] = reward
        self.terminated[rows] = terminated
        self.success[rows] = np.nan if success is None else success
        self.step_in_episode[rows] += 1
        truncated = ~terminated & (self.step_in_episode[rows] >= self.horizon)
        self.truncated[rows] = truncated
        self.obs[rows] = self.next_obs[rows]
        self.episode_start[rows] = False

        ended = live[terminated | truncated]
        if ended.size:
            self.episode[ended] += 1
            self.step_in_episode[ended] = 0
            finished = self.episode[ended] >= self.episodes_per_trial
            self.active[ended[finished]] = False
            again = ended[~finished]
            if again.size:
                reset_obs = []
                for i in again.tolist():
                    try:
                        reset_obs.append(self._reset(i, int(self.episode[i])))
                    except Exception as error:
                        raise self._error(i, "reset", error) from error
                self.obs[again] = np.stack(reset_obs)
                self.episode_start[again] = True

    def _error(self, i: int | None, method: str, error: Exception) -> SamplerError:
        """``error`` of slot ``i`` (None: of the range of slots) as a SamplerError naming it."""
        if i is None:
            where = f"env slots {self.lo}-{self.lo + len(self.envs) - 1}"
        elif self.trials[i] is None:
            where = f"env slot {self.lo + i}"
        else:
            task = self.trials[i].task
            where = (f"env slot {self.lo + i} (task {task.index} of {task.env!r} {task.split}, "
                     f"{task.label})")
        return SamplerError(f"{where} failed in {method}: {type(error).__name__}: {error}")

    def close(self) -> None:
        for env in self.envs:
            env.close()


class LocalSlots:
    """Every slot in this process (``num_workers=0``)."""

    def __init__(self, suite: TaskSuite, num_slots: int, horizon: int, episodes_per_trial: int):
        self.arrays = SlotArrays(num_slots, suite.observation_dim, suite.action_dim)
        self.slots = EnvSlots(suite, self.arrays, 0, num_slots, horizon, episodes_per_trial)
        self.groups = group_bounds(num_slots, 1)  # nothing to overlap with in one process

    def start_round(self, trials: list[SlotTrial | None], call: int) -> None:
        """Slot ``i`` runs ``trials[i]`` (None: idles) from this round on."""
        self.slots.start_round(trials, call)

    def begin_step(self, group: int | None = None) -> None:
        self.slots.step()

    def finish_step(self, group: int | None = None) -> None:
        pass

    def close(self) -> None:
        self.slots.close()


# ---------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------
def worker_cpus(num_workers: int, pin: bool | None) -> list[int | None]:
    """The CPU each worker is pinned to (None: not pinned).

    ``pin=None`` pins only when the workers fill every CPU this process may use (its affinity
    mask, which SLURM and taskset set): then each gets its own core. With fewer workers the
    scheduler places them, so that several jobs on one node never pile onto the same cores.
    """
    try:
        allowed = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity API
        return [None] * num_workers
    if pin is None:
        pin = num_workers >= len(allowed)
    return [allowed[w % len(allowed)] if pin else None for w in range(num_workers)]


@contextmanager
def _single_threaded_children():
    # spawned workers copy this environment at start: one BLAS/OpenMP thread each, since the
    # workers already use every core between them
    names = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update({name: "1" for name in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _acquire(semaphore, spin_s: float, still_waiting) -> bool:
    """Take ``semaphore``: poll it for up to ``spin_s``, then block on it, calling
    ``still_waiting()`` every POLL_S; gives up (False) when that returns False."""
    if spin_s > 0:
        end = time.perf_counter() + spin_s
        while time.perf_counter() < end:
            if semaphore.acquire(False):
                return True
    while not semaphore.acquire(timeout=POLL_S):
        if not still_waiting():
            return False
    return True


def _worker_main(index: int, suite: TaskSuite, buffer, array_args: tuple,
                 ranges: list[tuple[int, int]], slot_args: tuple, go, done, pipe,
                 cpu: int | None, parent_pid: int, spin_s: float) -> None:
    # Ctrl-C, and SIGTERM sent to the whole process group (timeout, scancel), are the parent's
    # to handle: it finishes its step and closes us; if it dies instead, we see it and exit
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if cpu is not None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:  # not allowed here (some containers): run unpinned
            pass
    arrays = SlotArrays(*array_args, buffer=buffer)
    try:  # one EnvSlots per group of slots
        slots = [EnvSlots(suite, arrays, lo, hi, *slot_args) for lo, hi in ranges]
    except BaseException as error:
        pipe.send(("error", _describe(index, error)))
        return
    pipe.send(("ready", None))
    woken = 0
    while True:
        # the sampler's process gone: so are we
        if not _acquire(go, spin_s, lambda: os.getppid() == parent_pid):
            return
        entry = woken % 2  # commands come in order through a ring of two
        command, group = int(arrays.command[index, entry]), int(arrays.group[index, entry])
        woken += 1
        if command == CLOSE:
            break
        try:
            if command == STEP:
                slots[group].step()
            elif command == ROUND:
                for group_slots, (trials, call) in zip(slots, pipe.recv()):
                    group_slots.start_round(trials, call)
        except (EOFError, BrokenPipeError):  # the parent closed its end: it is shutting down
            return
        except Exception as error:  # reported to the parent, which raises it
            arrays.failed[index] += 1  # one message per failure
            try:
                pipe.send(_describe(index, error))
            except BrokenPipeError:
                return
        done[group].release()
    for group_slots in slots:
        group_slots.close()
    pipe.close()


def _describe(index: int, error: BaseException) -> str:
    trace = "".join(traceback.format_exception(error.__cause__ or error))
    return (f"sampler worker {index} (pid {os.getpid()}): {type(error).__name__}: {error}\n"
            f"--- worker traceback ---\n{trace}")


def _shutdown(processes, go, command, pipes) -> None:
    command[:] = CLOSE
    for semaphore in go:
        semaphore.release()
    for process in processes:
        process.join(timeout=5)
    for process in processes:
        if process.is_alive():  # stuck in an env step: do not wait for it
            process.kill()
            process.join()
    for pipe in pipes:
        pipe.close()


def group_bounds(num_slots: int, groups: int, members: int = 1) -> list[tuple[int, int]]:
    """The rows of each group of slots: all of them, or two halves (the first one larger).

    With ``members`` > 1 (a population of ``num_slots // members`` slots per member) each
    half holds a whole number of slots per member, ``ceil`` and ``floor`` of half of them.
    """
    per_member = num_slots // members
    if groups == 1 or per_member < 2:
        return [(0, num_slots)]
    half = members * -(-per_member // 2)
    return [(0, half), (half, num_slots)]


class WorkerSlots:
    """The slots spread over ``num_workers`` worker processes, ``num_slots // num_workers`` or
    one more each (of each group), stepped in lockstep through shared memory."""

    def __init__(self, suite: TaskSuite, num_slots: int, num_workers: int, horizon: int,
                 episodes_per_trial: int, pin: bool | None = None, groups: int = 1,
                 members: int = 1):
        """``pin``: see :func:`worker_cpus`; ``groups`` and ``members``: see :func:`group_bounds`. Waits poll before they sleep (``SPIN_S``) only
        where the workers and this process have a CPU each of the job's allocation
        (:func:`trmrl.utils.available_cpus`): polling on a shared one would take it from the
        process being waited for."""
        context = mp.get_context("spawn")  # fork after torch has started threads is unsafe
        self.arrays = SlotArrays.shared(context, num_slots, suite.observation_dim,
                                        suite.action_dim, num_workers)
        self.groups = group_bounds(num_slots, groups, members)
        # ranges[w][g]: worker w's rows of group g, contiguous
        self.ranges: list[list[tuple[int, int]]] = [[] for _ in range(num_workers)]
        for lo, hi in self.groups:
            sizes = [len(c) for c in np.array_split(np.arange(lo, hi), num_workers)]
            edges = lo + np.cumsum([0] + sizes)
            for w in range(num_workers):
                self.ranges[w].append((int(edges[w]), int(edges[w + 1])))
        self.go = [context.Semaphore(0) for _ in range(num_workers)]
        self.done = [context.Semaphore(0) for _ in self.groups]
        self._pending = [0] * len(self.groups)  # workers woken whose "done" is not collected
        self._posted = [0] * num_workers  # commands posted to each worker: its ring position
        self.pipes, self.processes = [], []
        cpus = worker_cpus(num_workers, pin)
        self.spin_s = SPIN_S if num_workers < available_cpus() else 0.0
        with _single_threaded_children():
            for w, ranges in enumerate(self.ranges):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=_worker_main, name=f"trmrl-sampler-{w}", daemon=True,
                    args=(w, suite, self.arrays.buffer, self.arrays.args, ranges,
                          (horizon, episodes_per_trial), self.go[w], self.done, child_end,
                          cpus[w], os.getpid(), self.spin_s))
                process.start()
                child_end.close()
                self.pipes.append(parent_end)
                self.processes.append(process)
        self.cpus = cpus
        # stops the workers when the sampler is closed, collected, or the interpreter exits
        self._finalizer = weakref.finalize(self, _shutdown, self.processes, self.go,
                                           self.arrays.command, self.pipes)
        try:
            for w in range(num_workers):
                self._wait_ready(w)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, w: int) -> None:
        waited = 0.0
        while not self.pipes[w].poll(POLL_S):
            self._check_alive()
            waited += POLL_S
            if waited > STARTUP_TIMEOUT_S:
                raise SamplerError(f"sampler worker {w} did not start in {STARTUP_TIMEOUT_S:.0f} s")
        try:
            status, message = self.pipes[w].recv()
        except EOFError:  # it died before a word, e.g. while importing; its stderr says why
            self.processes[w].join(timeout=5)
            raise SamplerError(f"sampler worker {w} (pid {self.processes[w].pid}) exited during "
                               f"startup with exit code {self.processes[w].exitcode}") from None
        if status != "ready":
            raise SamplerError(f"building the envs failed in {message}")

    def _check_alive(self) -> bool:
        """True while every worker lives; raises SamplerError for the first that died."""
        for w, process in enumerate(self.processes):
            if process.exitcode is not None:
                rows = ", ".join(f"{lo}-{hi - 1}" for lo, hi in self.ranges[w] if hi > lo)
                self._finalizer()  # the rest cannot go on without it
                raise SamplerError(f"sampler worker {w} (pid {process.pid}, env slots {rows}) "
                                   f"died with exit code {process.exitcode}")
        return True

    def _settle(self) -> None:
        """Let steps whose wait was interrupted (Ctrl-C, an error) finish before anything in
        shared memory changes: their workers may not even have read their command yet."""
        for group in range(len(self.groups)):
            if self._pending[group]:
                try:
                    self._wait(group)
                except SamplerError:
                    pass  # a failure in a step whose results nobody will read

    def _post(self, command: int, group: int) -> None:
        """Wake every worker for ``command`` on its slots of ``group``. A worker reads its
        commands in order from a ring of two, so at most two may be unread: the caller
        collects a group's step before posting that group again."""
        for w, semaphore in enumerate(self.go):
            entry = self._posted[w] % 2
            self.arrays.command[w, entry] = command
            self.arrays.group[w, entry] = group
            self._posted[w] += 1
            semaphore.release()
            self._pending[group] += 1

    def _collect(self, group: int) -> None:
        while self._pending[group]:
            _acquire(self.done[group], self.spin_s, self._check_alive)
            self._pending[group] -= 1

    def _wait(self, group: int) -> None:
        self._collect(group)
        if self.arrays.failed.any():
            for other in range(len(self.groups)):
                self._collect(other)  # then every failure's message is in its pipe
            # read them all, so that the next step starts clean
            messages = [self.pipes[w].recv() for w in np.flatnonzero(self.arrays.failed)
                        for _ in range(int(self.arrays.failed[w]))]
            self.arrays.failed[:] = 0
            raise SamplerError(messages[0])

    def start_round(self, trials: list[SlotTrial | None], call: int) -> None:
        """Slot ``i`` runs ``trials[i]`` (None: idles) from this round on."""
        if not self._finalizer.alive:
            raise SamplerError("the sampler's workers are closed")
        self._settle()
        for w, ranges in enumerate(self.ranges):
            try:
                self.pipes[w].send([(trials[lo:hi], call) for lo, hi in ranges])
            except OSError:  # a broken pipe: say which worker died, and how
                self._check_alive()
                raise
        self._post(ROUND, 0)
        self._wait(0)

    def begin_step(self, group: int | None = None) -> None:
        """Step the live slots of ``group`` (None: of every group) on the actions in
        ``arrays.action``; returns at once."""
        for g in range(len(self.groups)) if group is None else (group,):
            if self._pending[g]:
                self._settle()  # a step of this group was interrupted: let it finish first
            self._post(STEP, g)

    def finish_step(self, group: int | None = None) -> None:
        """Wait until the workers have stepped ``group`` (None: every group); raises a
        worker's error as SamplerError."""
        for g in range(len(self.groups)) if group is None else (group,):
            self._wait(g)

    def close(self) -> None:
        self._finalizer()
