"""Trial bookkeeping of the sampler, on the exactly predictable toy suite."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from toy_suite import ToySuite
from trmrl import env_slots
from trmrl.env_slots import POLL_S, worker_cpus
from trmrl.envs import SuiteError, Task, make_suite
from trmrl.sampling import PolicyOutput, RandomPolicy, SamplerError, TrialSampler
from trmrl.utils import available_cpus


class ScriptedPolicy:
    """Acts `act_fn(step)`; records every reset and input so tests can inspect them."""

    def __init__(self, act_fn):
        self.act_fn = act_fn
        self.resets, self.inputs = [], []

    def reset(self, num_trials):
        self.resets.append(num_trials)

    def act(self, step, deterministic=False):
        self.inputs.append(step)
        action = self.act_fn(step)
        return PolicyOutput(action, {"tag": np.full(len(action), 7.0, np.float32)})


def counting_policy():
    """Action depends on the step in the episode, so prev_action is checkable."""
    return ScriptedPolicy(lambda s: (s.obs[:, :1] / 10.0).astype(np.float32))


def test_trial_layout_without_termination():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=4, seed=0) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 4))
    H, K = suite.horizon, suite.episodes_per_trial
    assert batch.obs.shape == (4, K * H, 2) and batch.action.shape == (4, K * H, 1)
    assert batch.valid.all() and batch.env_steps == 4 * K * H
    starts = np.zeros(K * H, bool)
    starts[::H] = True
    assert (batch.episode_start == starts).all()
    assert (batch.truncated == np.roll(starts, -1)).all() and not batch.terminated.any()
    assert (batch.episode_index == np.repeat(np.arange(K), H)).all()
    # trial start: zero previous action/reward; episode boundary: the last step's values
    assert (batch.prev_action[:, 0] == 0).all() and (batch.prev_reward[:, 0] == 0).all()
    np.testing.assert_array_equal(batch.prev_action[:, H], batch.action[:, H - 1])
    np.testing.assert_array_equal(batch.prev_reward[:, 1:], batch.reward[:, :-1])
    # next_obs of the last step of an episode is that episode's final obs, not the reset obs
    assert (batch.next_obs[:, H - 1, 0] == H).all() and (batch.obs[:, H, 0] == 0).all()
    np.testing.assert_allclose(batch.episode_return, batch.reward.reshape(4, K, H).sum(-1))
    assert (batch.episode_length == H).all()
    assert (batch.extras["tag"] == 7).all()
    assert batch.trial_end[:, -1].all() and batch.trial_end.sum() == 4
    aug = batch.augmented_inputs()
    assert aug.shape == (4, K * H, 2 + 1 + 1 + 1) and (aug[:, ::H, -1] == 1).all()


def test_termination_pads_and_resets():
    suite = ToySuite(fall_at=3)  # every episode ends after 3 of its 5 steps
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 2))
    K, H = suite.episodes_per_trial, suite.horizon
    assert batch.valid.sum(1).tolist() == [3 * K] * 2
    assert not batch.valid[:, 3 * K:].any()
    assert batch.terminated[:, [2, 5, 8]].all() and batch.terminated.sum() == 2 * K
    assert not batch.truncated.any()
    assert batch.episode_start[:, [0, 3, 6]].all() and batch.episode_start.sum() == 2 * K
    assert (batch.episode_length == 3).all()
    assert (batch.episode_index[:, :9] == np.repeat(np.arange(K), 3)).all()
    assert batch.trial_end[:, 8].all()


def test_horizon_and_episodes_override():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=1, horizon=2, episodes_per_trial=4) as sampler:
        batch = sampler.run(counting_policy(), suite.tasks("test", 0, 1))
    assert batch.obs.shape[1] == 8 and batch.episode_start[0, ::2].all()


def test_success_is_any_step_of_the_episode():
    suite = ToySuite()
    tasks = [suite._task("test", 0, 0.5), suite._task("test", 1, -0.9)]
    # hits 0.5 only on the third step of each episode
    policy = ScriptedPolicy(lambda s: np.where(s.obs[:, :1] == 2, 0.5, -0.2).astype(np.float32))
    with TrialSampler(suite, num_envs=2) as sampler:
        batch = sampler.run(policy, tasks)
    assert batch.success[0].sum() == suite.episodes_per_trial
    assert (batch.episode_success[0] == 1).all() and (batch.episode_success[1] == 0).all()


def test_more_tasks_than_slots_run_in_rounds_with_memory_reset():
    suite = ToySuite()
    policy = counting_policy()
    with TrialSampler(suite, num_envs=3) as sampler:
        batch = sampler.run(policy, suite.tasks("test", 0, 7))
    assert policy.resets == [3, 3, 1]
    assert batch.num_trials == 7 and [t.index for t in batch.tasks] == list(range(7))


def test_inactive_trials_are_flagged_to_the_policy():
    suite = ToySuite(fall_at=2)
    policy = counting_policy()
    with TrialSampler(suite, num_envs=2, horizon=5) as sampler:
        sampler.run(policy, suite.tasks("test", 0, 2))
    assert all(step.active.all() for step in policy.inputs)  # both fall at the same time
    assert len(policy.inputs) == 2 * suite.episodes_per_trial


def _random_batch(seed, call_twice=False):
    suite = ToySuite()
    with TrialSampler(suite, num_envs=4, seed=seed) as sampler:
        if call_twice:
            sampler.run(RandomPolicy([-1], [1], seed=1), suite.tasks("test", 0, 4))
        return sampler.run(RandomPolicy([-1], [1], seed=1), suite.tasks("test", 0, 4))


def test_same_seed_same_trials_different_seed_different_resets():
    a, b, c = _random_batch(0), _random_batch(0), _random_batch(1)
    np.testing.assert_array_equal(a.obs, b.obs)
    np.testing.assert_array_equal(a.reward, b.reward)
    assert not np.array_equal(a.obs[:, :, 1], c.obs[:, :, 1])  # reset noise differs
    d = _random_batch(0, call_twice=True)  # a later call gets fresh reset seeds
    assert not np.array_equal(a.obs[:, 0, 1], d.obs[:, 0, 1])


# ---------------------------------------------------------------------------------------
# Worker processes (shared memory): same trials, clear failures, clean shutdown
# ---------------------------------------------------------------------------------------
def _trials(suite, workers, num_tasks=7, num_envs=5, **kwargs):
    """Two calls (fresh reset seeds each) of random trials, with a per-step policy extra."""
    _, act_space = suite.spaces()
    rng = np.random.default_rng(0)

    class Policy(RandomPolicy):
        def act(self, step, deterministic=False):
            out = super().act(step, deterministic)
            out.extras["obs_sum"] = step.obs.sum(1)  # depends on what the envs returned
            return out

    with TrialSampler(suite, num_envs=num_envs, num_workers=workers, seed=11, **kwargs) as sampler:
        return [sampler.run(Policy(act_space.low, act_space.high, seed=1),
                            suite.sample_tasks(rng, num_tasks)) for _ in range(2)]


def _assert_same_batches(a, b):
    for name, value in vars(a).items():
        if name == "tasks":
            assert value == b.tasks
        elif name == "extras":
            assert value.keys() == b.extras.keys()
            for key in value:
                np.testing.assert_array_equal(value[key], b.extras[key], err_msg=key)
        else:
            other = getattr(b, name)
            assert value.dtype == other.dtype, name
            np.testing.assert_array_equal(value, other, err_msg=name)


@pytest.mark.parametrize("make, kwargs", [
    (lambda: ToySuite(), {}),
    (lambda: ToySuite(fall_at=3), {}),  # terminations: padded steps, resets mid-trial
    (lambda: make_suite("cheetah-vel"), {"horizon": 30}),
    (lambda: make_suite("hopper-params"), {"horizon": 60, "episodes_per_trial": 3}),  # falls
], ids=["toy", "toy-terminating", "cheetah-vel", "hopper-params"])
def test_worker_processes_give_identical_trials(make, kwargs):
    # 7 tasks on 5 slots: two rounds, the second leaves slots idle; 2 workers get 3 and 2 slots
    suite = make()
    local, shared = _trials(suite, 0, **kwargs), _trials(suite, 2, **kwargs)
    for a, b in zip(local, shared):
        _assert_same_batches(a, b)
    assert not np.array_equal(local[0].obs[:, 0], local[1].obs[:, 0])  # fresh resets per call
    if isinstance(suite, ToySuite) and suite.fall_at or suite.name == "hopper-params":
        assert not local[0].valid.all()


def _obs_trials(suite, workers, pipeline, num_tasks=7, num_envs=5, **kwargs):
    """Like _trials with a policy that acts on the observation alone (no random draws)."""
    _, act_space = suite.spaces()
    rng = np.random.default_rng(0)

    class Policy(ScriptedPolicy):
        def acting_view(self):
            return self

    policy = Policy(lambda s: np.tanh(s.obs[:, :act_space.shape[0]]).astype(np.float32))
    with TrialSampler(suite, num_envs=num_envs, num_workers=workers, seed=11,
                      pipeline=pipeline, **kwargs) as sampler:
        batches = [sampler.run(policy, suite.sample_tasks(rng, num_tasks)) for _ in range(2)]
    return batches, policy


@pytest.mark.parametrize("make, kwargs", [
    (lambda: ToySuite(), {}),
    (lambda: ToySuite(fall_at=3), {}),
    (lambda: make_suite("cheetah-vel"), {"horizon": 30}),
    (lambda: make_suite("hopper-params"), {"horizon": 60, "episodes_per_trial": 3}),
], ids=["toy", "toy-terminating", "cheetah-vel", "hopper-params"])
def test_a_pipelined_sampler_gives_identical_trials(make, kwargs):
    # 7 tasks on 5 slots: halves of 3 and 2 slots, and in the second round 2 tasks, all in
    # the first half; 2 workers hold 2 + 1 and 1 + 1 slots
    suite = make()
    (local, _), (piped, policy) = _obs_trials(suite, 0, False, **kwargs), _obs_trials(suite, 2, True, **kwargs)
    for a, b in zip(local, piped):
        _assert_same_batches(a, b)
    # each round: one reset per half it uses; the first round acts 3 + 2 rows at a time
    assert policy.resets == [3, 2, 2, 3, 2, 2]
    assert {len(step.obs) for step in policy.inputs} == {3, 2}
    if suite.name == "hopper-params":
        assert not local[0].valid.all()  # falls: trials end at different steps


@pytest.mark.parametrize("make", [lambda: ToySuite(), lambda: make_suite("cheetah-vel")], ids=["toy", "cheetah-vel"])
def test_random_actions_are_drawn_row_after_row_when_pipelined(make):
    # where every trial runs to the end, the halves draw what one call over all rows draws
    suite = make()
    local, piped = _trials(suite, 0, horizon=20), _trials(suite, 2, horizon=20, pipeline=True)
    for a, b in zip(local, piped):
        _assert_same_batches(a, b)


def test_a_policy_without_acting_views_acts_for_every_slot_at_once():
    suite = ToySuite(fall_at=3)
    tasks = suite.tasks("test", 0, 4)
    with TrialSampler(suite, num_envs=4, num_workers=2, pipeline=True) as piped, \
            TrialSampler(suite, num_envs=4) as local:
        assert piped.pipeline and not local.pipeline
        policy = counting_policy()
        a, b = piped.run(policy, tasks), local.run(counting_policy(), tasks)
    _assert_same_batches(a, b)
    assert policy.resets == [4] and {len(step.obs) for step in policy.inputs} == {4}


def test_env_error_in_a_pipelined_worker_names_the_slot_and_the_workers_go_on():
    suite = ToySuite()
    tasks = suite.tasks("test", 0, 4)
    policy = counting_policy()
    policy.acting_view = lambda: policy
    with TrialSampler(suite, num_envs=4, num_workers=2, pipeline=True) as sampler:
        # slot 3 is in the second half, on worker 1
        with pytest.raises(SamplerError, match=r"sampler worker 1 .*env slot 3 \(task 9 .*no target"):
            sampler.run(policy, tasks[:3] + [_broken_task(9)])
        batch = sampler.run(policy, tasks)
    assert batch.valid.all()


def _broken_task(index):
    return Task("toy", "test", index, {}, "no target")  # ToyEnv.step raises KeyError('target')


def test_env_error_in_a_worker_names_worker_slot_and_task():
    suite = ToySuite()
    tasks = suite.tasks("test", 0, 4)
    with TrialSampler(suite, num_envs=4, num_workers=2) as sampler:
        with pytest.raises(SamplerError, match=r"sampler worker 1 .*env slot 3 \(task 9 .*no target"
                                               r"\) failed in step: KeyError: 'target'"):
            sampler.run(counting_policy(), tasks[:3] + [_broken_task(9)])
        batch = sampler.run(counting_policy(), tasks)  # the workers survive a failed env
    assert batch.valid.all()


def test_env_error_in_process_names_the_slot():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=2) as sampler, \
            pytest.raises(SamplerError, match=r"env slot 1 \(task 4 .*KeyError"):
        sampler.run(counting_policy(), suite.tasks("test", 0, 1) + [_broken_task(4)])


def test_an_error_while_the_workers_step_leaves_them_in_step():
    # extras are recorded while the workers step: a bad one raises between wake and wait
    suite = ToySuite()
    tasks = suite.tasks("test", 0, 4)
    bad = ScriptedPolicy(lambda s: np.zeros((len(s.obs), 1), np.float32))
    bad.act = lambda step, deterministic=False: PolicyOutput(np.zeros((4, 1), np.float32),
                                                             {"bad": np.zeros(3)})
    with TrialSampler(suite, num_envs=4, num_workers=2) as shared, TrialSampler(suite, num_envs=4) as local:
        with pytest.raises(ValueError):
            shared.run(bad, tasks)
        a, b = shared.run(counting_policy(), tasks, call=3), local.run(counting_policy(), tasks, call=3)
    _assert_same_batches(a, b)


def test_dead_worker_is_reported():
    suite = ToySuite()
    with TrialSampler(suite, num_envs=4, num_workers=2) as sampler:
        victim = sampler._slots.processes[1]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        with pytest.raises(SamplerError, match=r"sampler worker 1 .*env slots 2-3.* exit code -9"):
            sampler.run(counting_policy(), suite.tasks("test", 0, 4))
    assert not any(p.is_alive() for p in sampler._slots.processes)


def test_close_stops_workers():
    with TrialSampler(ToySuite(), num_envs=3, num_workers=3) as sampler:
        processes = list(sampler._slots.processes)
        assert all(p.is_alive() for p in processes)
    assert all(p.exitcode == 0 for p in processes)
    sampler.close()  # twice is fine


def test_workers_ignore_sigterm_and_sigint():
    # timeout and scancel signal the whole process group: shutdown is the parent's to do
    suite = ToySuite()
    tasks = suite.tasks("test", 0, 4)
    with TrialSampler(suite, num_envs=4, num_workers=2) as sampler:
        for pid in sampler.worker_pids:
            os.kill(pid, signal.SIGTERM)
            os.kill(pid, signal.SIGINT)
        batch = sampler.run(counting_policy(), tasks)
        again = sampler.run(counting_policy(), tasks)
        processes = list(sampler._slots.processes)
        assert all(p.is_alive() for p in processes)
    assert batch.valid.all() and again.valid.all()
    assert all(p.exitcode == 0 for p in processes)  # closed by the parent, not killed


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux affinity API")
def test_workers_are_pinned_inside_the_affinity_mask_and_single_threaded():
    allowed = os.sched_getaffinity(0)
    omp = os.environ.get("OMP_NUM_THREADS")
    with TrialSampler(ToySuite(), num_envs=4, num_workers=2, pin_workers=True) as sampler:
        pids = [p.pid for p in sampler._slots.processes]
        masks = [os.sched_getaffinity(pid) for pid in pids]
        environs = [Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") for pid in pids]
    assert all(len(mask) == 1 and mask <= allowed for mask in masks)
    assert len(allowed) == 1 or masks[0] != masks[1]
    assert all(b"OMP_NUM_THREADS=1" in env for env in environs)
    assert os.environ.get("OMP_NUM_THREADS") == omp  # the parent's setting is untouched
    # by default only workers that fill the mask are pinned
    assert worker_cpus(len(allowed), None) == sorted(allowed)
    assert worker_cpus(len(allowed) + 1, None)[-1] == min(allowed)
    if len(allowed) > 1:
        assert worker_cpus(1, None) == [None]


def test_waits_poll_before_they_sleep_and_give_up_when_told(monkeypatch):
    semaphore = mp.get_context("spawn").Semaphore(0)
    checks = []
    monkeypatch.setattr(env_slots, "POLL_S", 0.01)
    began = time.perf_counter()
    assert not env_slots._acquire(semaphore, 0.05, lambda: (checks.append(1), len(checks) < 3)[1])
    assert len(checks) == 3 and time.perf_counter() - began >= 0.05  # polled, then slept
    semaphore.release()
    assert env_slots._acquire(semaphore, 0.05, lambda: False)  # taken while polling
    semaphore.release()
    assert env_slots._acquire(semaphore, 0.0, lambda: False)  # no polling: taken at once
    assert not semaphore.acquire(False)


def test_only_workers_that_leave_a_cpu_spare_poll():
    cpus = available_cpus()  # the job's allocation, not the whole node
    with TrialSampler(ToySuite(), num_envs=cpus, num_workers=cpus) as sampler:
        assert sampler._slots.spin_s == 0.0
        full = sampler.run(RandomPolicy([-1], [1], seed=1), ToySuite().tasks("train", 0, cpus))
    if cpus > 1:
        with TrialSampler(ToySuite(), num_envs=cpus, num_workers=cpus - 1) as sampler:
            assert sampler._slots.spin_s == env_slots.SPIN_S > 0
            spare = sampler.run(RandomPolicy([-1], [1], seed=1), ToySuite().tasks("train", 0, cpus))
        np.testing.assert_array_equal(spare.obs, full.obs)


_ORPHAN_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from toy_suite import ToySuite
from trmrl.sampling import TrialSampler
if __name__ == "__main__":
    sampler = TrialSampler(ToySuite(), num_envs=2, num_workers=2, pipeline=True)
    print(" ".join(str(p.pid) for p in sampler._slots.processes), flush=True)
    semaphores = [*sampler._slots.go, *sampler._slots.done]
    print(" ".join(s._semlock.name.lstrip("/") for s in semaphores), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # no cleanup at all
"""


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_die_with_a_killed_parent_and_leave_no_shared_memory(tmp_path):
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent)))
    shm = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    pid_line, semaphore_line = result.stdout.splitlines()
    pids = [int(pid) for pid in pid_line.split()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10 * POLL_S
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)
    if shm:
        # the shared block's file is unlinked at creation; the named semaphores are unlinked
        # by multiprocessing's resource tracker once every process that used them is gone
        semaphores = [f"sem.{name}" for name in semaphore_line.split()]
        while any(os.path.exists(f"/dev/shm/{name}") for name in semaphores) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [name for name in semaphores if os.path.exists(f"/dev/shm/{name}")]
        assert not [name for name in set(os.listdir("/dev/shm")) - shm if name.startswith(("pym", "psm"))]


# ---------------------------------------------------------------------------------------
# A population: K member seeds stepped by one sampler
# ---------------------------------------------------------------------------------------
class ObsPolicy(ScriptedPolicy):
    """Memoryless and deterministic: the action and an extra are functions of the
    observation alone, so a row's trial cannot depend on which other rows share its step."""

    def __init__(self, act_dim):
        super().__init__(lambda s: np.tanh(s.obs[:, :act_dim] + 0.3).astype(np.float32))

    def act(self, step, deterministic=False):
        out = super().act(step, deterministic)
        return PolicyOutput(out.action, {"obs_sum": step.obs.sum(1)})

    def acting_view(self):
        return self


SEEDS = (3, 7)


def _member_tasks(suite, per_member):
    """Member-major tasks: member k's L tasks differ from the others'."""
    rng = np.random.default_rng(5)
    return [suite.sample_tasks(rng, per_member) for _ in SEEDS]


@pytest.mark.parametrize("make, kwargs", [
    (lambda: ToySuite(), {}),
    (lambda: make_suite("hopper-params"), {"horizon": 40, "episodes_per_trial": 3}),  # falls
], ids=["toy", "hopper-params"])
@pytest.mark.parametrize("workers, pipeline", [(0, False), (2, False), (2, True)],
                         ids=["in-process", "workers", "pipelined"])
def test_each_member_of_a_population_gets_the_trials_of_its_own_sampler(make, kwargs, workers,
                                                                      pipeline):
    # 5 tasks per member on 3 slots per member: rounds of 3 and 2 trials of every member;
    # pipelined, halves of 2 + 1 slots per member, the last round 2 + 0
    suite = make()
    _, act_space = suite.spaces()
    per_member = 5
    member_tasks = _member_tasks(suite, per_member)
    policy = ObsPolicy(act_space.shape[0])
    with TrialSampler(suite, num_envs=3 * len(SEEDS), num_workers=workers, seed=list(SEEDS),
                      pipeline=pipeline, **kwargs) as sampler:
        assert sampler.pipeline == pipeline and sampler.seeds == SEEDS
        calls = [sampler.run(policy, [t for tasks in member_tasks for t in tasks])
                 for _ in range(2)]
        assert sampler.calls == 2
    for seed, tasks, k in zip(SEEDS, member_tasks, range(len(SEEDS))):
        # the reference: one sampler per seed, another slot count, no rounds
        with TrialSampler(suite, num_envs=per_member, seed=seed, **kwargs) as alone:
            expected = [alone.run(ObsPolicy(act_space.shape[0]), tasks) for _ in range(2)]
        for batch, want in zip(calls, expected):
            _assert_same_batches(batch.split(len(SEEDS))[k], want)
    assert not np.array_equal(calls[0].obs[:, 0], calls[1].obs[:, 0])  # fresh resets per call
    if suite.name == "hopper-params":
        assert not calls[0].valid.all()  # trials end at different steps

    # the policy acts for K equal member blocks: the first steps of the first round
    # (pipelined: two member-major halves, trials 0-1 and 2 of every member; the last round
    # of 2 trials per member fits in the first half)
    blocks = [(0, 2), (2, 3)] if pipeline else [(0, 3)]
    for step, (lo, hi) in zip(policy.inputs, blocks):
        np.testing.assert_array_equal(step.task_features, np.stack(
            [suite.task_features(t) for tasks in member_tasks for t in tasks[lo:hi]]))
    assert policy.resets == ([4, 2, 4] if pipeline else [6, 4]) * 2


def test_a_population_of_one_is_a_plain_sampler():
    suite = ToySuite(fall_at=3)
    tasks = suite.tasks("test", 0, 5)
    with TrialSampler(suite, num_envs=2, seed=[4]) as one, TrialSampler(suite, 2, seed=4) as plain:
        assert one.seed == 4 and one.members == 1
        _assert_same_batches(one.run(counting_policy(), tasks), plain.run(counting_policy(), tasks))


def test_trial_batch_split_gives_member_blocks():
    suite = ToySuite()
    tasks = suite.tasks("test", 0, 6)
    with TrialSampler(suite, num_envs=6, seed=[1, 2, 3]) as sampler:
        batch = sampler.run(ObsPolicy(1), tasks)
    parts = batch.split(3)
    assert [p.num_trials for p in parts] == [2, 2, 2]
    assert [t.index for p in parts for t in p.tasks] == list(range(6))
    np.testing.assert_array_equal(np.concatenate([p.obs for p in parts]), batch.obs)
    np.testing.assert_array_equal(parts[2].extras["obs_sum"], batch.extras["obs_sum"][4:])
    assert batch.split(1)[0].num_trials == 6
    for members in (4, 0, True):
        with pytest.raises(ValueError, match=f"6 trials into {members!r} equal"):
            batch.split(members)


def test_population_sampler_errors():
    suite = ToySuite()
    with pytest.raises(SuiteError, match="num_envs must be a multiple of the 2 member seeds.*got 3"):
        TrialSampler(suite, num_envs=3, seed=[1, 2])
    for bad in ([], [1, -2], "12", [True], 1.5, [1.0]):
        with pytest.raises(SuiteError, match="seed must be a non-negative integer or a non-empty"):
            TrialSampler(suite, num_envs=2, seed=bad)
    with TrialSampler(suite, num_envs=4, seed=(1, 2)) as sampler:
        with pytest.raises(SuiteError, match="5 tasks for 2 member seeds: .*2 equal blocks"):
            sampler.run(counting_policy(), suite.tasks("test", 0, 5))
        with pytest.raises(TypeError, match=r"population of 2 seeds \[1, 2\]: read .seeds"):
            sampler.seed
        assert sampler.reset_seed(0, 1, 2, member=1) == env_slots.reset_seed(2, 0, 1, 2)


def test_population_halves_hold_every_member():
    assert env_slots.group_bounds(6, 2, members=2) == [(0, 4), (4, 6)]
    assert env_slots.group_bounds(9, 2, members=3) == [(0, 6), (6, 9)]
    assert env_slots.group_bounds(4, 2, members=4) == [(0, 4)]  # one slot each: no halves
    assert env_slots.group_bounds(5, 2) == [(0, 3), (3, 5)]


@pytest.mark.parametrize("kwargs, word", [({"horizon": 0}, "horizon"),
                                          ({"episodes_per_trial": -1}, "episodes_per_trial"),
                                          ({"num_envs": 0}, "num_envs"),
                                          ({"num_workers": 9}, "num_workers")])
def test_bad_sampler_settings(kwargs, word):
    args = {"num_envs": 2, **kwargs}
    with pytest.raises(SuiteError, match=word):
        TrialSampler(ToySuite(), **args)


def test_task_of_another_env_is_rejected():
    suite = ToySuite()
    other = suite.tasks("test", 0, 1)[0].__class__("cheetah-vel", "test", 0, {})
    with TrialSampler(suite, num_envs=1) as sampler, pytest.raises(SuiteError, match="cheetah-vel"):
        sampler.run(counting_policy(), [other])


@pytest.mark.parametrize("env_name", [
    "cheetah-vel", "cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir", "walker-params",
    "hopper-params", "ml1-reach", "ml10",
    # slow: the ML1 suite of ml1-reach on other Meta-World classes; the fast suite runs their
    # full-length episodes (test_envs_metaworld.py::test_episodes_run_past_metaworld_limit)
    # and ml1-push through the sampler (test_sampled_trials_are_metaworlds_own_steps)
    pytest.param("ml1-push", marks=pytest.mark.slow),
    pytest.param("ml1-pick-place", marks=pytest.mark.slow),
    pytest.param("ml45", marks=pytest.mark.slow)])
def test_every_suite_runs_one_full_trial(env_name):
    from trmrl.envs import make_suite
    suite = make_suite(env_name)
    _, act_space = suite.spaces()
    with TrialSampler(suite, num_envs=1, seed=0) as sampler:
        batch = sampler.run(RandomPolicy(act_space.low, act_space.high), suite.eval_tasks("test", 0, 1))
    K, H = suite.episodes_per_trial, suite.horizon
    assert batch.obs.shape == (1, K * H, suite.observation_dim)
    assert (batch.episode_length > 0).all() and (batch.episode_length <= H).all()
    assert batch.episode_start.sum() == K and np.isfinite(batch.reward[batch.valid]).all()
    if suite.has_success:
        assert set(np.unique(batch.episode_success)) <= {0.0, 1.0}
    else:
        assert np.isnan(batch.episode_success).all()
