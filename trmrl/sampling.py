"""Trials: K episodes on one task with the agent's memory kept across them.

:class:`TrialSampler` runs many trials at once (one env slot per trial, optionally spread
over worker processes) and returns whole trials as arrays of shape ``[trials, K*H, ...]``.
Every step carries the standard augmented input of memory-based meta-RL agents:
``(obs_t, a_{t-1}, r_{t-1}, d_t)`` where ``d_t`` marks the first step of an episode. At an
episode boundary inside a trial the previous action and reward are those of the last step of
the previous episode (so the agent sees the final reward); at the trial start they are zero.

Reset seeds depend only on (sampler seed, call index, trial index, episode index), so the
same seed gives the same trials whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

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
    """What the sampler needs from an agent: memory is cleared per trial by ``reset``."""

    def reset(self, num_trials: int) -> None: ...

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput: ...


class RandomPolicy:
    """Uniform random actions in the action box (smoke tests, benchmarks)."""

    def __init__(self, action_low: np.ndarray, action_high: np.ndarray, seed: int = 0):
        self.low, self.high = np.asarray(action_low), np.asarray(action_high)
        self.rng = np.random.default_rng(seed)

    def reset(self, num_trials: int) -> None:
        pass

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        n = len(step.obs)
        if deterministic:
            return PolicyOutput(np.broadcast_to((self.low + self.high) / 2, (n, len(self.low))).copy())
        return PolicyOutput(self.rng.uniform(self.low, self.high, size=(n, len(self.low))))


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
# Env slots, in this process or in a worker
# ---------------------------------------------------------------------------------------
class EnvGroup:
    """A fixed set of env slots of one suite, stepped together (suites pickle to workers)."""

    def __init__(self, suite: TaskSuite, num_envs: int):
        self.envs = [suite.make_env() for _ in range(num_envs)]
        self.has_success = suite.has_success

    def set_tasks(self, slots: list[int], tasks: list[Task]) -> None:
        for slot, task in zip(slots, tasks):
            self.envs[slot].set_task(task)

    def reset(self, slots: list[int], seeds: list[int]) -> np.ndarray:
        return np.stack([self.envs[s].reset(seed=int(seed))[0] for s, seed in zip(slots, seeds)])

    def step(self, slots: list[int], actions: np.ndarray):
        obs, rewards, terminated, success = [], [], [], []
        for slot, action in zip(slots, actions):
            o, r, term, _, info = self.envs[slot].step(action)
            obs.append(o)
            rewards.append(r)
            terminated.append(term)
            success.append(float(info["success"]) if self.has_success else np.nan)
        return np.stack(obs), np.asarray(rewards), np.asarray(terminated), np.asarray(success)

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _worker(pipe, suite: TaskSuite, num_envs: int) -> None:
    group = EnvGroup(suite, num_envs)
    pipe.send("ready")
    while True:
        method, args = pipe.recv()
        if method == "close":
            group.close()
            pipe.close()
            return
        try:
            pipe.send(("ok", getattr(group, method)(*args)))
        except Exception as error:  # report to the parent instead of dying silently
            pipe.send(("error", f"{type(error).__name__}: {error}"))


class _RemoteGroup:
    def __init__(self, suite: TaskSuite, num_envs: int, context):
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=_worker, args=(child, suite, num_envs), daemon=True)
        self.process.start()
        child.close()
        if self.pipe.recv() != "ready":
            raise RuntimeError("sampler worker failed to start")

    def call(self, method: str, *args):
        self.pipe.send((method, args))
        status, result = self.pipe.recv()
        if status == "error":
            raise RuntimeError(f"sampler worker: {result}")
        return result

    def close(self) -> None:
        try:
            self.pipe.send(("close", ()))
        except (BrokenPipeError, OSError):
            pass
        self.process.join(timeout=5)


class _Slots:
    """Maps global slot numbers to (group, local slot) and fans calls out to the groups."""

    def __init__(self, suite: TaskSuite, num_envs: int, num_workers: int):
        if num_workers == 0:
            self.groups = [EnvGroup(suite, num_envs)]
            self.sizes = [num_envs]
            self.remote = False
        else:
            context = mp.get_context("spawn")  # fork after torch threads is unsafe
            self.sizes = [len(c) for c in np.array_split(np.arange(num_envs), num_workers)]
            self.groups = [_RemoteGroup(suite, size, context) for size in self.sizes]
            self.remote = True
        self.offsets = np.cumsum([0] + self.sizes)

    def _split(self, slots: np.ndarray):
        for g, (lo, hi) in enumerate(zip(self.offsets[:-1], self.offsets[1:])):
            mask = (slots >= lo) & (slots < hi)
            if mask.any():
                yield g, mask, (slots[mask] - lo).tolist()

    def _call(self, g: int, method: str, *args):
        if self.remote:
            return self.groups[g].call(method, *args)
        return getattr(self.groups[g], method)(*args)

    def set_tasks(self, slots: np.ndarray, tasks: list[Task]) -> None:
        for g, mask, local in self._split(slots):
            self._call(g, "set_tasks", local, [t for t, m in zip(tasks, mask) if m])

    def reset(self, slots: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        parts = {g: (mask, self._call(g, "reset", local, seeds[mask].tolist()))
                 for g, mask, local in self._split(slots)}
        return _merge(len(slots), parts)

    def step(self, slots: np.ndarray, actions: np.ndarray):
        parts = {g: (mask, self._call(g, "step", local, actions[mask]))
                 for g, mask, local in self._split(slots)}
        return tuple(_merge(len(slots), {g: (m, r[i]) for g, (m, r) in parts.items()})
                     for i in range(4))

    def close(self) -> None:
        for group in self.groups:
            group.close()


def _merge(n: int, parts: dict) -> np.ndarray:
    first = next(iter(parts.values()))[1]
    out = np.empty((n, *first.shape[1:]), dtype=first.dtype)
    for mask, values in parts.values():
        out[mask] = values
    return out


# ---------------------------------------------------------------------------------------
# The sampler
# ---------------------------------------------------------------------------------------
class TrialSampler:
    """Runs ``len(tasks)`` trials in lockstep, ``num_envs`` at a time.

    Args:
        suite: the task suite (or its name).
        num_envs: env slots (trials run at once); more tasks than slots run in rounds.
        horizon: steps per episode (default: the suite's).
        episodes_per_trial: K (default: the suite's).
        num_workers: 0 steps every env in this process; W > 0 spreads the slots over W
            worker processes. Results do not depend on it.
        seed: base seed of every env reset.
    """

    def __init__(self, suite: TaskSuite | str, num_envs: int, *, horizon: int | None = None,
                 episodes_per_trial: int | None = None, num_workers: int = 0, seed: int = 0):
        self.suite = make_suite(suite) if isinstance(suite, str) else suite
        self.horizon = check_positive("horizon", self.suite.horizon if horizon is None else horizon)
        self.episodes_per_trial = check_positive(
            "episodes_per_trial",
            self.suite.episodes_per_trial if episodes_per_trial is None else episodes_per_trial)
        self.num_envs = check_positive("num_envs", num_envs)
        if not isinstance(num_workers, int) or not 0 <= num_workers <= num_envs:
            raise SuiteError(f"num_workers must be an integer in [0, num_envs={num_envs}], "
                             f"got {num_workers!r}")
        self.seed = int(seed)
        self.calls = 0  # how many times `run` was called: part of every reset seed
        self._slots = _Slots(self.suite, num_envs, num_workers)
        self.obs_dim, self.act_dim = self.suite.observation_dim, self.suite.action_dim

    def run(self, policy: TrialPolicy, tasks: list[Task], deterministic: bool = False,
            call: int | None = None) -> TrialBatch:
        """Run one trial per task and return them all (``policy.reset`` per round).

        Reset seeds come from ``call`` (default: how many calls came before), so passing
        the same ``call`` repeats the same starting states, e.g. for periodic evaluation.
        """
        if not tasks:
            raise SuiteError("run() needs at least one task")
        for task in tasks:
            if task.env != self.suite.name:
                raise SuiteError(f"task of env {task.env!r} given to a {self.suite.name!r} sampler")
        if call is None:
            call = self.calls
            self.calls += 1
        rounds = [self._run_round(policy, tasks[lo:lo + self.num_envs], deterministic, call, lo)
                  for lo in range(0, len(tasks), self.num_envs)]
        return TrialBatch.concatenate(rounds)

    def reset_seed(self, call: int, trial: int, episode: int) -> int:
        return int(np.random.SeedSequence([self.seed, call, trial, episode]).generate_state(1)[0])

    def _run_round(self, policy, tasks, deterministic, call, first_trial) -> TrialBatch:
        n, K, H = len(tasks), self.episodes_per_trial, self.horizon
        T = K * H
        rows = np.arange(n)
        buf = _Buffers(n, T, K, self.obs_dim, self.act_dim)

        self._slots.set_tasks(rows, tasks)
        seeds = np.array([self.reset_seed(call, first_trial + i, 0) for i in rows])
        obs = self._slots.reset(rows, seeds).astype(np.float32)
        prev_action = np.zeros((n, self.act_dim), np.float32)
        prev_reward = np.zeros(n, np.float32)
        episode_start = np.ones(n, bool)
        active = np.ones(n, bool)
        t = np.zeros(n, np.int64)  # position of each trial in its T steps
        episode = np.zeros(n, np.int64)
        step_in_episode = np.zeros(n, np.int64)
        extras: dict[str, np.ndarray] = {}
        features = np.stack([self.suite.task_features(task) for task in tasks]).astype(np.float32)

        policy.reset(n)
        while active.any():
            out = policy.act(StepInput(obs.copy(), prev_action.copy(), prev_reward.copy(),
                                       episode_start.copy(), active.copy(), features), deterministic)
            action = np.asarray(out.action, np.float32).reshape(n, self.act_dim)
            live = rows[active]
            next_obs, reward, terminated, success = self._slots.step(live, action[live])
            at = (live, t[live])
            buf.obs[at], buf.prev_action[at] = obs[live], prev_action[live]
            buf.prev_reward[at], buf.episode_start[at] = prev_reward[live], episode_start[live]
            buf.action[at], buf.reward[at], buf.next_obs[at] = action[live], reward, next_obs
            buf.terminated[at], buf.success[at] = terminated, success
            buf.episode_index[at], buf.valid[at] = episode[live], True
            for key, value in out.extras.items():
                value = np.asarray(value)
                if key not in extras:
                    extras[key] = np.zeros((n, T, *value.shape[1:]), value.dtype)
                extras[key][at] = value[live]
            buf.episode_return[live, episode[live]] += reward
            buf.episode_length[live, episode[live]] += 1
            if self.suite.has_success:  # success at any step of the episode
                buf.episode_success[live, episode[live]] = np.maximum(
                    buf.episode_success[live, episode[live]], success)

            step_in_episode[live] += 1
            truncated = ~terminated & (step_in_episode[live] >= H)
            buf.truncated[at] = truncated
            obs[live], prev_action[live], prev_reward[live] = next_obs, action[live], reward
            episode_start[live] = False
            t[live] += 1

            ended = live[terminated | truncated]
            episode[ended] += 1
            step_in_episode[ended] = 0
            active[ended[episode[ended] >= K]] = False
            again = ended[episode[ended] < K]
            if len(again):
                seeds = np.array([self.reset_seed(call, first_trial + i, episode[i]) for i in again])
                obs[again] = self._slots.reset(again, seeds)
                episode_start[again] = True
        if not self.suite.has_success:
            buf.success[:] = np.nan
            buf.episode_success[:] = np.nan
        return TrialBatch(tasks=list(tasks), extras=extras, task_features=features, **vars(buf))

    def close(self) -> None:
        self._slots.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _Buffers:
    def __init__(self, n, T, K, obs_dim, act_dim):
        self.obs = np.zeros((n, T, obs_dim), np.float32)
        self.prev_action = np.zeros((n, T, act_dim), np.float32)
        self.prev_reward = np.zeros((n, T), np.float32)
        self.episode_start = np.zeros((n, T), bool)
        self.action = np.zeros((n, T, act_dim), np.float32)
        self.reward = np.zeros((n, T), np.float32)
        self.next_obs = np.zeros((n, T, obs_dim), np.float32)
        self.terminated = np.zeros((n, T), bool)
        self.truncated = np.zeros((n, T), bool)
        self.success = np.zeros((n, T), np.float32)
        self.episode_index = np.zeros((n, T), np.int16)
        self.valid = np.zeros((n, T), bool)
        self.episode_return = np.zeros((n, K), np.float64)
        self.episode_length = np.zeros((n, K), np.int32)
        self.episode_success = np.zeros((n, K), np.float32)


