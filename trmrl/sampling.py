"""Trials: K episodes on one task with the agent's memory kept across them.

:class:`TrialSampler` runs many trials at once (one env slot per trial, optionally spread
over worker processes that share memory with this one: :mod:`trmrl.env_slots`) and returns
whole trials as arrays of shape ``[trials, K*H, ...]``.
Every step carries the standard augmented input of memory-based meta-RL agents:
``(obs_t, a_{t-1}, r_{t-1}, d_t)`` where ``d_t`` marks the first step of an episode. At an
episode boundary inside a trial the previous action and reward are those of the last step of
the previous episode (so the agent sees the final reward); at the trial start they are zero.

Reset seeds depend only on (sampler seed, call index, trial index, episode index), so the
same seed gives the same trials whatever the number of workers.

A sampler may also step the trials of a population: K runs that differ by seed, trained in
one process (``TrialSampler(seed=[s_1, ..., s_K])``). Tasks, the policy's rows and the
returned trials are then member-major, and member k's trials reset exactly as those of a
sampler of seed ``s_k`` given member k's tasks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from trmrl.env_slots import LocalSlots, SamplerError, SlotTrial, WorkerSlots, reset_seed
from trmrl.envs import SuiteError, Task, TaskSuite, make_suite
from trmrl.envs.base import check_positive


# ---------------------------------------------------------------------------------------
# What agents see and return
# ---------------------------------------------------------------------------------------
@dataclass
class StepInput:
    """One lockstep step of N trials, as an agent's ``act`` receives it."""

    obs: np.ndarray  # [N, obs_dim] s_t
    prev_action: np.ndarray  # [N, act_dim] a_{t-1}; zeros at the trial start
    prev_reward: np.ndarray  # [N] r_{t-1}; zero at the trial start
    episode_start: np.ndarray  # [N] bool d_t: first step of an episode
    active: np.ndarray  # [N] bool: trials still running; the rest are padding to ignore
    task_features: np.ndarray  # [N, F] privileged task parameters: only the oracle reads them

    def augmented(self) -> np.ndarray:
        """[N, obs+act+2] float32: the working memory (s_t, a_{t-1}, r_{t-1}, d_t)."""
        return augment(self.obs, self.prev_action, self.prev_reward, self.episode_start)


def augment(obs, prev_action, prev_reward, episode_start) -> np.ndarray:
    return np.concatenate([obs, prev_action, prev_reward[..., None],
                           episode_start[..., None].astype(np.float32)], axis=-1, dtype=np.float32)


@dataclass
class PolicyOutput:
    action: np.ndarray  # [N, act_dim], as sampled (envs clip to their bounds)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # per-step, e.g. logp, value


class TrialPolicy(Protocol):
    """What the sampler needs from an agent: memory is cleared per trial by ``reset``.

    A policy may also have ``acting_view() -> TrialPolicy``: another policy with the same
    parameters and random generator but a memory of its own. A pipelined sampler then acts
    for two halves of its envs through two views, in turn, while the workers step the other
    half.
    """

    def reset(self, num_trials: int) -> None: ...

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput: ...


class RandomPolicy:
    """Uniform random actions in the action box (smoke tests, benchmarks)."""

    def __init__(self, action_low: np.ndarray, action_high: np.ndarray, seed: int = 0):
        self.low, self.high = np.asarray(action_low), np.asarray(action_high)
        self.rng = np.random.default_rng(seed)
        # rng.uniform(low, high) draws low + (high - low) * random() in float64; spelled out,
        # the same numbers cost a third of the time (it matters in sampler benchmarks)
        self._low64 = self.low.astype(np.float64)
        self._span64 = self.high.astype(np.float64) - self._low64

    def reset(self, num_trials: int) -> None:
        pass

    def acting_view(self) -> RandomPolicy:
        return self  # no memory: one generator, drawn row after row in either case

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        n = len(step.obs)
        if deterministic:
            return PolicyOutput(np.broadcast_to((self.low + self.high) / 2, (n, len(self.low))).copy())
        action = self.rng.random((n, len(self.low)))
        action *= self._span64
        action += self._low64
        return PolicyOutput(action)


# ---------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------
@dataclass
class TrialBatch:
    """Whole trials, padded to T = K*H steps; ``valid`` masks steps after early terminations."""

    tasks: list[Task]
    obs: np.ndarray  # [N, T, obs_dim] float32
    prev_action: np.ndarray  # [N, T, act_dim] float32
    prev_reward: np.ndarray  # [N, T] float32
    episode_start: np.ndarray  # [N, T] bool
    action: np.ndarray  # [N, T, act_dim] float32
    reward: np.ndarray  # [N, T] float32
    next_obs: np.ndarray  # [N, T, obs_dim] float32 (the last obs of an episode, before reset)
    terminated: np.ndarray  # [N, T] bool: the env ended the episode (falling over)
    truncated: np.ndarray  # [N, T] bool: the horizon ended it
    success: np.ndarray  # [N, T] float32: info["success"] (NaN where the suite has none)
    episode_index: np.ndarray  # [N, T] int16: episode inside the trial
    valid: np.ndarray  # [N, T] bool
    task_features: np.ndarray  # [N, F] float32 (privileged; see StepInput)
    episode_return: np.ndarray  # [N, K] float64
    episode_length: np.ndarray  # [N, K] int32
    episode_success: np.ndarray  # [N, K] float32: success at any step (NaN where none)
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # [N, T, ...] from the policy

    @property
    def num_trials(self) -> int:
        return self.obs.shape[0]

    @property
    def env_steps(self) -> int:
        return int(self.valid.sum())

    @property
    def trial_end(self) -> np.ndarray:
        """[N, T] bool: the last valid step of each trial (where the memory is dropped)."""
        end = np.zeros_like(self.valid)
        end[np.arange(self.num_trials), self.valid.sum(1) - 1] = True
        return end

    def augmented_inputs(self) -> np.ndarray:
        """[N, T, obs+act+2] float32: (s_t, a_{t-1}, r_{t-1}, d_t) per step."""
        return augment(self.obs, self.prev_action, self.prev_reward, self.episode_start)

    def to_torch(self, device="cpu") -> dict:
        """Array fields as torch tensors on ``device`` (one transfer per field)."""
        import torch
        out = {}
        for name, value in vars(self).items():
            if isinstance(value, np.ndarray):
                out[name] = torch.from_numpy(np.ascontiguousarray(value)).to(device)
        out.update({k: torch.from_numpy(np.ascontiguousarray(v)).to(device)
                    for k, v in self.extras.items()})
        return out

    def split(self, members: int) -> list[TrialBatch]:
        """The batches of a population's ``members``, from a member-major batch (rows
        ``k*L .. (k+1)*L - 1`` are member k's); views into this batch's arrays."""
        if (isinstance(members, bool) or not isinstance(members, int) or members <= 0
                or self.num_trials % members):
            raise ValueError(f"cannot split {self.num_trials} trials into {members!r} equal "
                             "member blocks")
        size = self.num_trials // members
        parts = []
        for k in range(members):
            rows = slice(k * size, (k + 1) * size)
            fields = {}
            for name, value in vars(self).items():
                if name == "extras":
                    fields[name] = {key: array[rows] for key, array in value.items()}
                else:
                    fields[name] = value[rows]
            parts.append(TrialBatch(**fields))
        return parts

    @staticmethod
    def concatenate(batches: list[TrialBatch]) -> TrialBatch:
        if len(batches) == 1:
            return batches[0]
        fields = {}
        for name, value in vars(batches[0]).items():
            if name == "tasks":
                fields[name] = [t for b in batches for t in b.tasks]
            elif name == "extras":
                fields[name] = {k: np.concatenate([b.extras[k] for b in batches]) for k in value}
            else:
                fields[name] = np.concatenate([getattr(b, name) for b in batches])
        return TrialBatch(**fields)


# ---------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------
def member_seeds(seed: int | Sequence[int]) -> tuple[int, ...]:
    """``seed`` as a tuple of member seeds: one for a single run, K for a population."""
    if isinstance(seed, (int, np.integer)):
        seeds = (seed,)
    else:
        try:
            seeds = () if isinstance(seed, (str, bytes)) else tuple(seed)
        except TypeError:
            seeds = ()
    if not seeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 0
                        for s in seeds):
        raise SuiteError(f"seed must be a non-negative integer or a non-empty sequence of "
                         f"them (one per member), got {seed!r}")
    return tuple(int(s) for s in seeds)


class TrialSampler:
    """Runs ``len(tasks)`` trials in lockstep, ``num_envs`` at a time.

    Args:
        suite: the task suite (or its name).
        num_envs: env slots (trials run at once); more tasks than slots run in rounds.
        horizon: steps per episode (default: the suite's).
        episodes_per_trial: K (default: the suite's).
        num_workers: 0 steps every env in this process; W > 0 spreads the slots over W
            worker processes that share observations, actions and rewards with this one
            through shared memory (see :mod:`trmrl.env_slots`). Results do not depend on it.
        seed: base seed of every env reset; or a sequence of seeds, one per member of a
            population (see :meth:`run`), whose ``num_envs`` must then be a multiple of the
            number of members: P = num_envs / members slots each.
        pin_workers: pin each worker to one CPU of this process's affinity mask; the default
            (None) pins when the workers fill the mask.
        pipeline: with workers, split the slots into two halves that step in turn: the
            policy acts for one half while the workers step the other, hiding the policy's
            time (a GPU's round trip) behind the envs'. Needs a policy with ``acting_view``
            (others act for all slots at once). The envs see the same resets either way;
            a policy's random draws come half by half. A population's halves hold
            ceil(P/2) and floor(P/2) slots of every member, so each view acts for the same
            number of trials of every member (member-major), never for some members only.
    """

    def __init__(self, suite: TaskSuite | str, num_envs: int, *, horizon: int | None = None,
                 episodes_per_trial: int | None = None, num_workers: int = 0,
                 seed: int | Sequence[int] = 0, pin_workers: bool | None = None,
                 pipeline: bool = False):
        self.suite = make_suite(suite) if isinstance(suite, str) else suite
        self.horizon = check_positive("horizon", self.suite.horizon if horizon is None else horizon)
        self.episodes_per_trial = check_positive(
            "episodes_per_trial",
            self.suite.episodes_per_trial if episodes_per_trial is None else episodes_per_trial)
        self.num_envs = check_positive("num_envs", num_envs)
        if (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                or not 0 <= num_workers <= num_envs):
            raise SuiteError(f"num_workers must be an integer in [0, num_envs={num_envs}], "
                             f"got {num_workers!r}")
        self.seeds = member_seeds(seed)  # one per member; a single run is a population of one
        self.members = len(self.seeds)
        if num_envs % self.members:
            raise SuiteError(f"num_envs must be a multiple of the {self.members} member seeds "
                             f"(the same number of env slots per member), got {num_envs}")
        self.envs_per_member = num_envs // self.members
        self.num_workers = num_workers
        self.calls = 0  # how many times `run` was called: part of every reset seed
        self.obs_dim, self.act_dim = self.suite.observation_dim, self.suite.action_dim
        slot_args = (self.horizon, self.episodes_per_trial)
        if num_workers == 0:
            self._slots = LocalSlots(self.suite, num_envs, *slot_args)
        else:
            self._slots = WorkerSlots(self.suite, num_envs, num_workers, *slot_args, pin=pin_workers,
                                      groups=2 if pipeline else 1, members=self.members)
        self.pipeline = len(self._slots.groups) > 1
        self._record: _StepRecord | None = None  # allocated by the first run
        # seconds spent in run(): in policy.act, stepping or waiting for the envs, in all
        self.timings = {"policy": 0.0, "envs": 0.0, "total": 0.0}

    @property
    def seed(self) -> int:
        """The seed of a single run's sampler (a population has ``seeds``)."""
        if self.members > 1:
            raise TypeError(f"this sampler steps a population of {self.members} seeds "
                            f"{list(self.seeds)}: read .seeds")
        return self.seeds[0]

    def run(self, policy: TrialPolicy, tasks: list[Task], deterministic: bool = False,
            call: int | None = None) -> TrialBatch:
        """Run one trial per task and return them all (``policy.reset`` per round).

        Reset seeds come from ``call`` (default: how many calls came before), so passing
        the same ``call`` repeats the same starting states, e.g. for periodic evaluation.

        A population's ``tasks`` are member-major: K equal blocks of L, member k's
        ``tasks[k*L:(k+1)*L]``, and member k's trial j resets with
        ``reset_seed(seeds[k], call, j, episode)``, as trial j of a sampler of seed
        ``seeds[k]`` would. A round runs the next P trials of every member; the policy acts
        for its rows member-major (K equal blocks), and the batch is member-major too
        (:meth:`TrialBatch.split` gives the members' batches). All members advance ``calls``
        together.
        """
        if not tasks:
            raise SuiteError("run() needs at least one task")
        members = self.members
        if len(tasks) % members:
            raise SuiteError(f"run() got {len(tasks)} tasks for {members} member seeds: they "
                             f"must come as {members} equal blocks, one per member")
        for task in tasks:
            if task.env != self.suite.name:
                raise SuiteError(f"task of env {task.env!r} given to a {self.suite.name!r} sampler")
        if call is None:
            call = self.calls
            self.calls += 1
        began = time.perf_counter()
        per_member, P = len(tasks) // members, self.envs_per_member
        rounds = []
        for first in range(0, per_member, P):
            count = min(P, per_member - first)
            round_tasks = [tasks[k * per_member + first + i] for k in range(members)
                           for i in range(count)]
            rounds.append(self._run_round(policy, round_tasks, deterministic, call, first))
        if members > 1 and len(rounds) > 1:  # each round is member-major: regroup by member
            parts = [batch.split(members) for batch in rounds]
            rounds = [part[k] for k in range(members) for part in parts]
        batch = TrialBatch.concatenate(rounds)
        self.timings["total"] += time.perf_counter() - began
        return batch

    def reset_seed(self, call: int, trial: int, episode: int, member: int = 0) -> int:
        return reset_seed(self.seeds[member], call, trial, episode)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (none in-process), e.g. to measure their CPU time."""
        return [process.pid for process in getattr(self._slots, "processes", [])]

    def _lanes(self, policy, per_member: int) -> list[tuple[int | None, int, int, int]]:
        """How a round of ``per_member`` trials per member fills the slots: per lane,
        (group of slots it steps, None: all; its first slot; trials of each member in it;
        the first of them, by index in the member's round)."""
        groups = self._slots.groups
        if len(groups) > 1 and hasattr(policy, "acting_view"):
            (first_lo, first_hi), (second_lo, _) = groups
            in_first = min(per_member, (first_hi - first_lo) // self.members)
            if in_first < per_member:
                return [(0, first_lo, in_first, 0),
                        (1, second_lo, per_member - in_first, in_first)]
        return [(None, 0, per_member, 0)]  # one lane over every slot, stepping every group

    def _run_round(self, policy, tasks, deterministic, call, first_trial) -> TrialBatch:
        """Trials ``first_trial..`` of every member: ``tasks`` member-major, K equal blocks."""
        n, A, K = len(tasks), self.act_dim, self.members
        per_member = n // K
        T = self.episodes_per_trial * self.horizon
        if self._record is None:
            self._record = _StepRecord(T, self.num_envs, self.obs_dim, A)
        record = self._record
        slots = self._slots

        # Each lane's slots hold its trials member-major; order[row] is the slot of the
        # batch's row (member-major, trials in order)
        specs = self._lanes(policy, per_member)
        order = np.empty(n, np.int64)
        assigned: list[SlotTrial | None] = [None] * self.num_envs
        for _, lo, count, first in specs:
            for k in range(K):
                for i in range(first, first + count):
                    row, slot = k * per_member + i, lo + k * count + i - first
                    order[row] = slot
                    assigned[slot] = SlotTrial(tasks[row], self.seeds[k], first_trial + i)
        features = np.stack([self.suite.task_features(task) for task in tasks]).astype(np.float32)
        slot_features = np.zeros((self.num_envs, features.shape[1]), np.float32)
        slot_features[order] = features
        shared = slots.arrays
        clock, timings = time.perf_counter, self.timings
        began = clock()
        slots.start_round(assigned, call)
        timings["envs"] += clock() - began

        # A lane is a range of slots that one policy (view) acts for; with a pipeline each
        # group of slots is a lane, and the workers step one while the policy acts for the other
        lanes = [_Lane(slice(lo, lo + K * count), group,
                       policy if index == 0 else policy.acting_view(), A)
                 for index, (group, lo, count, _) in enumerate(specs)]
        for lane in lanes:
            lane.policy.reset(lane.size)
        extra_keys: list[str] = []

        # Trials start together and a running trial takes one step per lockstep step, so
        # lockstep step t is step t of every running trial: the record is step-major.
        def launch(lane: _Lane, t: int) -> bool:
            """Act for the lane's slots at step t and start their step; False once its
            trials have all ended."""
            rows = lane.rows
            active = shared.active[rows].copy()
            if not active.any():
                record.valid[t:, rows] = False
                return False
            obs, start = shared.obs[rows].copy(), shared.episode_start[rows].copy()
            began = clock()
            out = lane.policy.act(StepInput(obs, lane.prev_action, lane.prev_reward, start,
                                            active, slot_features[rows]), deterministic)
            action = np.asarray(out.action, np.float32).reshape(lane.size, A)
            shared.action[rows] = action
            acted = clock()
            slots.begin_step(lane.group)
            timings["policy"] += acted - began
            timings["envs"] += clock() - acted
            # recorded while the workers step
            record.obs[t, rows], record.episode_start[t, rows] = obs, start
            record.action[t, rows], record.valid[t, rows] = action, active
            for key, value in out.extras.items():
                value = np.asarray(value)
                if key not in extra_keys:
                    extra_keys.append(key)
                    record.extra(key, value, t)
                record.extras[key][t, rows] = value
            lane.action, lane.active = action, active
            return True

        def land(lane: _Lane, t: int) -> None:
            """Wait for the lane's step t and record what it gave."""
            rows = lane.rows
            waited = clock()
            slots.finish_step(lane.group)
            timings["envs"] += clock() - waited
            reward = shared.reward[rows]
            record.next_obs[t, rows], record.reward[t, rows] = shared.next_obs[rows], reward
            record.terminated[t, rows] = shared.terminated[rows]
            record.truncated[t, rows] = shared.truncated[rows]
            record.success[t, rows] = shared.success[rows]
            # new arrays, not in-place updates: agents may keep the inputs of earlier steps.
            # Finished trials keep their last values (padding from now on).
            action, active = lane.action, lane.active
            if active.all():
                lane.prev_action, lane.prev_reward = action.copy(), reward.astype(np.float32)
            else:
                lane.prev_action = np.where(active[:, None], action, lane.prev_action)
                lane.prev_reward = np.where(active, reward, lane.prev_reward).astype(np.float32)

        running = [launch(lane, 0) for lane in lanes]
        steps = int(any(running))
        for t in range(T):
            if not any(running):
                break
            for i, lane in enumerate(lanes):
                if running[i]:
                    land(lane, t)
                    running[i] = t + 1 < T and launch(lane, t + 1)
                    steps = max(steps, t + 1 + running[i])
        return record.trial_batch(tasks, features, order, steps, self.episodes_per_trial,
                                  self.suite.has_success, extra_keys)

    def close(self) -> None:
        self._slots.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Lane:
    """Slots ``rows`` that one policy acts for, stepping slot group ``group`` (None: all)."""

    def __init__(self, rows: slice, group: int | None, policy: TrialPolicy, act_dim: int):
        self.rows, self.group, self.policy = rows, group, policy
        self.size = rows.stop - rows.start
        self.prev_action = np.zeros((self.size, act_dim), np.float32)  # zero at trial start
        self.prev_reward = np.zeros(self.size, np.float32)
        self.action = self.active = None  # of the step in flight


class _StepRecord:
    """What a round records per lockstep step, step-major: ``[T, slots, ...]``.

    Kept across rounds, so each step writes contiguous rows into memory that is already
    mapped (writing ``[trial, t]`` of fresh arrays costs several times more per step);
    :meth:`trial_batch` transposes a round into the trial-major TrialBatch.
    """

    def __init__(self, T, num_slots, obs_dim, act_dim):
        self.obs = np.zeros((T, num_slots, obs_dim), np.float32)
        self.next_obs = np.zeros((T, num_slots, obs_dim), np.float32)
        self.action = np.zeros((T, num_slots, act_dim), np.float32)
        self.reward = np.zeros((T, num_slots))  # float64, as the envs give it: returns sum these
        self.episode_start = np.zeros((T, num_slots), bool)
        self.terminated = np.zeros((T, num_slots), bool)
        self.truncated = np.zeros((T, num_slots), bool)
        self.success = np.zeros((T, num_slots), np.float32)
        self.valid = np.zeros((T, num_slots), bool)
        self.extras: dict[str, np.ndarray] = {}

    def extra(self, key: str, value: np.ndarray, t: int) -> None:
        """Make room for a policy extra first seen at step ``t`` (zero before it)."""
        T, num_slots = self.valid.shape
        array = self.extras.get(key)
        if array is None or array.shape[2:] != value.shape[1:] or array.dtype != value.dtype:
            array = self.extras[key] = np.zeros((T, num_slots, *value.shape[1:]), value.dtype)
        array[:t] = 0

    def trial_batch(self, tasks, features, order, steps, K, has_success, extra_keys) -> TrialBatch:
        """The round's trials, row ``i`` from slot ``order[i]``."""
        n = len(tasks)
        if np.array_equal(order, np.arange(order[0], order[0] + n)):
            order = slice(int(order[0]), int(order[0]) + n)  # a slice is the cheaper index
        self.valid[steps:, order] = False  # rows of an earlier, longer round

        def trials(array):  # [T, slots, ...] -> a fresh [n, T, ...]
            return np.ascontiguousarray(array[:, order].swapaxes(0, 1))

        valid = trials(self.valid)
        fields = {name: trials(getattr(self, name)) for name in (
            "obs", "next_obs", "action", "episode_start", "terminated", "truncated", "success")}
        reward64 = trials(self.reward)
        extras = {key: trials(self.extras[key]) for key in extra_keys}
        invalid = ~valid
        if invalid.any():  # steps after a trial's end: zeros, whatever the slot held
            for array in (*fields.values(), reward64, *extras.values()):
                array[invalid] = 0
        reward = reward64.astype(np.float32)
        # the previous action and reward are the last step's (zero at the trial start)
        prev_action, prev_reward = np.zeros_like(fields["action"]), np.zeros_like(reward)
        prev_action[:, 1:], prev_reward[:, 1:] = fields["action"][:, :-1], reward[:, :-1]
        episode_index = np.cumsum(fields["episode_start"], axis=1, dtype=np.int16) - 1
        for array in (prev_action, prev_reward, episode_index):
            array[invalid] = 0

        episode_return = np.zeros((n, K))
        episode_length = np.zeros((n, K), np.int32)
        episode_success = np.full((n, K), np.nan, np.float32)
        success = fields["success"]
        for k in range(K):
            in_k = valid & (episode_index == k)
            # cumsum adds in step order, as a running total would (sum() adds pairwise)
            episode_return[:, k] = np.where(in_k, reward64, 0.0).cumsum(axis=1)[:, -1]
            episode_length[:, k] = in_k.sum(1)
            if has_success:  # success at any step of the episode
                episode_success[:, k] = np.where(in_k, success, 0).max(1)
        if not has_success:
            success[:] = np.nan
        return TrialBatch(tasks=list(tasks), prev_action=prev_action, prev_reward=prev_reward,
                          reward=reward, episode_index=episode_index, valid=valid,
                          task_features=features, episode_return=episode_return,
                          episode_length=episode_length, episode_success=episode_success,
                          extras=extras, **fields)
