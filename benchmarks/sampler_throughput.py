"""Sampler throughput against the physical limit and against gymnasium (issue 8, benchmark 1).

Prints, from one run on the CPUs this process may use (restrict them with taskset):

* raw physics: ``mujoco.mj_step`` with the env's frame skip and random controls, one process
  on one core, and one process per core at once;
* our TrialSampler with random actions, in-process (``num_workers=0``) and with workers;
* gymnasium's AsyncVectorEnv stepping the same env (our TaskEnv under a TimeLimit) with
  random actions, with as many envs as ours and with one env per core;
* CPU time per env step of each (all its processes), which other load on the machine
  disturbs much less than the rates, and where the sampler's time went;
* the ratios the issue judges: ours / (cores x single-core raw) and ours / AsyncVectorEnv.

With ``--bare-metaworld`` (a Meta-World suite) it measures instead, on one core: a plain loop
over metaworld's own ``env.step`` and our sampler in-process on the same tasks and random
actions, and the ratio (what our side costs on top of metaworld's); with ``--worker-memory``
also the memory of a sampler worker's env slots as training draws train tasks.

    python benchmarks/sampler_throughput.py --env cheetah-vel
    taskset -c 0-15 python benchmarks/sampler_throughput.py --workers 16 --envs 256
    python benchmarks/sampler_throughput.py --env ml1-reach --bare-metaworld --envs 8
    python benchmarks/sampler_throughput.py --env ml45 --bare-metaworld --worker-memory
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing as mp
import os
import platform
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class Measured:
    rate: float  # env steps/s
    cpu_us: float  # CPU time per env step, all processes involved (NaN where unknown)
    timings: dict | None = None  # TrialSampler.timings for ours


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return list(range(os.cpu_count() or 1))


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of other processes so far (Linux /proc; NaN elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return float("nan")
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


# ---------------------------------------------------------------------------------------
# Raw physics: the most a sampler could reach on these cores
# ---------------------------------------------------------------------------------------
def physics(env_name: str):
    """(model, data, frame_skip) of a suite's env, set to its first test task."""
    from trmrl.envs import make_suite
    suite = make_suite(env_name)
    env = suite.make_env(suite.eval_tasks("test", 0, 1)[0])
    env.reset(seed=0)
    if hasattr(env, "body"):  # locomotion: trmrl.envs.locomotion.MujocoTaskEnv
        return env.model, env.data, env.body.frame_skip
    inner = env.metaworld_env  # Meta-World: the metaworld env of the task
    return inner.model, inner.data, inner.frame_skip


def _raw_worker(env_name: str, cpu: int, steps: int, horizon: int, start, results) -> None:
    import mujoco
    os.sched_setaffinity(0, {cpu})
    model, data, frame_skip = physics(env_name)
    low, high = model.actuator_ctrlrange.T
    controls = np.random.default_rng(cpu).uniform(low, high, (1024, model.nu))

    def loop(n: int) -> None:
        for i in range(n):
            if i % horizon == 0:  # as an env would: random controls topple some bodies
                mujoco.mj_resetData(model, data)
            data.ctrl[:] = controls[i % 1024]
            mujoco.mj_step(model, data, nstep=frame_skip)

    loop(1000)  # warm caches and clocks
    start.wait()  # all processes measure the same seconds
    wall, cpu_time = time.perf_counter(), time.process_time()
    loop(steps)
    results.put((steps / (time.perf_counter() - wall), (time.process_time() - cpu_time) / steps))


def raw_rate(env_name: str, cpus: list[int], steps: int, horizon: int) -> Measured:
    """Raw physics, one process per CPU in ``cpus``: summed rate, mean CPU per step."""
    context = mp.get_context("spawn")
    start, results = context.Barrier(len(cpus)), context.Queue()
    processes = [context.Process(target=_raw_worker, args=(env_name, cpu, steps, horizon, start, results))
                 for cpu in cpus]
    for process in processes:
        process.start()
    rates, cpu_per_step = zip(*[results.get() for _ in processes])
    for process in processes:
        process.join()
    return Measured(sum(rates), 1e6 * float(np.mean(cpu_per_step)))


# ---------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------
def sampler_rate(env_name: str, workers: int, envs: int, steps: int) -> Measured:
    """TrialSampler.run with random actions, whole calls, after one warm-up call."""
    from trmrl.envs import make_suite
    from trmrl.sampling import RandomPolicy, TrialSampler
    suite = make_suite(env_name)
    _, action_space = suite.spaces()
    rng = np.random.default_rng(0)
    policy = RandomPolicy(action_space.low, action_space.high, seed=0)
    with TrialSampler(suite, envs, num_workers=workers, seed=0) as sampler:
        sampler.run(policy, suite.sample_tasks(rng, envs))  # warm-up: first resets, page faults
        sampler.timings = dict.fromkeys(sampler.timings, 0.0)
        cpu_before = time.process_time() + cpu_seconds(sampler.worker_pids)
        done, wall = 0, time.perf_counter()
        while done < steps:
            done += sampler.run(policy, suite.sample_tasks(rng, envs)).env_steps
        wall = time.perf_counter() - wall
        cpu = time.process_time() + cpu_seconds(sampler.worker_pids) - cpu_before
        return Measured(done / wall, 1e6 * cpu / done, sampler.timings)


# ---------------------------------------------------------------------------------------
# gymnasium's AsyncVectorEnv on the same env
# ---------------------------------------------------------------------------------------
def _make_gym_env(env_name: str, task, horizon: int):
    import gymnasium as gym
    from trmrl.envs import make_suite
    return gym.wrappers.TimeLimit(make_suite(env_name).make_env(task), max_episode_steps=horizon)


def async_rate(env_name: str, envs: int, steps: int, gym_id: str | None = None) -> Measured:
    """AsyncVectorEnv with random actions: our env (a task per env, episodes of the suite's
    horizon), or the gymnasium env ``gym_id``."""
    import gymnasium as gym
    from gymnasium.vector import AsyncVectorEnv
    from trmrl.envs import make_suite
    if gym_id:
        vector_env = AsyncVectorEnv([functools.partial(gym.make, gym_id)] * envs)
    else:
        suite = make_suite(env_name)
        tasks = suite.sample_tasks(np.random.default_rng(0), envs)
        vector_env = AsyncVectorEnv([functools.partial(_make_gym_env, env_name, task, suite.horizon)
                                     for task in tasks])
    space = vector_env.action_space
    actions = np.random.default_rng(0).uniform(space.low, space.high, (64, *space.shape))
    actions = actions.astype(space.dtype)
    try:
        vector_env.reset(seed=0)
        for i in range(50):
            vector_env.step(actions[i % 64])
        pids = [process.pid for process in vector_env.processes]
        iterations = max(1, steps // envs)
        cpu_before = time.process_time() + cpu_seconds(pids)
        wall = time.perf_counter()
        for i in range(iterations):
            vector_env.step(actions[i % 64])
        wall = time.perf_counter() - wall
        cpu = time.process_time() + cpu_seconds(pids) - cpu_before
        return Measured(iterations * envs / wall, 1e6 * cpu / (iterations * envs))
    finally:
        vector_env.close()


# ---------------------------------------------------------------------------------------
# Meta-World: metaworld's own env.step against our sampler, on one core
# ---------------------------------------------------------------------------------------
class BareMetaWorld:
    """A plain loop over metaworld's own envs (one per task, from its class) doing what our
    sampler does around them: per trial ``set_task``, ``seed`` and ``reset``, per step
    actions drawn as RandomPolicy draws them, as float32; trials of one episode."""

    def __init__(self, env_name: str, tasks):
        from trmrl.envs import make_suite
        suite = make_suite(env_name)
        train_classes, test_classes = suite.class_dicts()
        classes = {**train_classes, **test_classes}
        self.mw_tasks = [suite.metaworld_task(task) for task in tasks]
        self.envs = [classes[mw_task.env_name]() for mw_task in self.mw_tasks]
        self.horizon = suite.horizon
        _, action_space = suite.spaces()
        self.low = action_space.low.astype(np.float64)
        self.span = action_space.high.astype(np.float64) - self.low
        self.rng = np.random.default_rng(0)
        self.trials = 0

    def trial(self) -> int:
        self.trials += 1
        for env, mw_task in zip(self.envs, self.mw_tasks):
            env.set_task(mw_task)
            env.seed(self.trials)
            env.reset()
        for _ in range(self.horizon):
            actions = self.rng.random((len(self.envs), len(self.low)))
            actions *= self.span
            actions += self.low
            for env, action in zip(self.envs, actions.astype(np.float32)):
                env.step(action)
        return len(self.envs) * self.horizon

    def close(self) -> None:
        for env in self.envs:
            env.close()


class OursInProcess:
    """Our TrialSampler in-process (0 workers) on the same tasks, trials of one episode."""

    def __init__(self, env_name: str, tasks):
        from trmrl.envs import make_suite
        from trmrl.sampling import RandomPolicy, TrialSampler
        suite = make_suite(env_name)
        _, action_space = suite.spaces()
        self.policy = RandomPolicy(action_space.low, action_space.high, seed=0)
        self.sampler = TrialSampler(suite, len(tasks), episodes_per_trial=1, seed=0)
        self.tasks = tasks

    def trial(self) -> int:
        return self.sampler.run(self.policy, self.tasks).env_steps

    def close(self) -> None:
        self.sampler.close()


def paired_metaworld_rates(env_name: str, tasks, steps: int):
    """Trials of the bare loop and of ours in turn (after one warm-up trial each), so that
    other load on the machine falls on both alike: (bare, ours) Measured over all trials,
    and the medians over pairs of ours / bare in env steps/s and bare / ours in CPU time."""
    bare, ours = BareMetaWorld(env_name, tasks), OursInProcess(env_name, tasks)
    try:
        bare.trial(), ours.trial()
        ours.sampler.timings = dict.fromkeys(ours.sampler.timings, 0.0)
        spent = {"bare": [], "ours": []}  # (env steps, wall s, CPU s) per trial
        while sum(done for done, _, _ in spent["ours"]) < steps:
            for key, runner in (("bare", bare), ("ours", ours)):
                wall, cpu = time.perf_counter(), time.process_time()
                done = runner.trial()
                spent[key].append((done, time.perf_counter() - wall, time.process_time() - cpu))
        totals = {key: np.sum(rows, axis=0) for key, rows in spent.items()}
        measured = [Measured(total[0] / total[1], 1e6 * total[2] / total[0],
                             ours.sampler.timings if key == "ours" else None)
                    for key, total in totals.items()]
        (bare_rows, ours_rows) = (np.array(spent[key]) for key in ("bare", "ours"))
        rate_ratio = np.median((ours_rows[:, 0] / ours_rows[:, 1]) / (bare_rows[:, 0] / bare_rows[:, 1]))
        cpu_ratio = np.median((bare_rows[:, 2] / bare_rows[:, 0]) / (ours_rows[:, 2] / ours_rows[:, 0]))
        return (*measured, float(rate_ratio), float(cpu_ratio), len(ours_rows))
    finally:
        bare.close()
        ours.close()


def rss_mib(pid: int | str = "self") -> float:
    """Resident memory of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return int(fields["VmRSS"].split()[0]) / 1024


def _memory_child(env_name: str, envs: int, rounds: int, results) -> None:
    """Runs in a process of its own: ``envs`` env slots stepped as one sampler worker steps
    them, through ``rounds`` rounds of train tasks drawn as training draws them; reports
    (rounds, metaworld envs this process holds, RSS MiB) along the way."""
    from trmrl.envs import make_suite, metaworld_suites
    from trmrl.sampling import RandomPolicy, TrialSampler
    suite = make_suite(env_name)
    _, action_space = suite.spaces()
    policy = RandomPolicy(action_space.low, action_space.high, seed=0)
    rng = np.random.default_rng(0)
    checkpoints = {1, 10, 30, rounds} | set(range(100, rounds, 100))
    with TrialSampler(suite, envs, horizon=1, episodes_per_trial=1) as sampler:
        results.put((0, envs, rss_mib()))  # each slot's env holds one metaworld env at start
        for done in range(1, rounds + 1):
            sampler.run(policy, suite.sample_tasks(rng, envs, seed=0))
            if done in checkpoints:
                idle = sum(len(idle) for idle in metaworld_suites._IDLE_ENVS.values())
                results.put((done, envs + idle, rss_mib()))
    results.put(None)


def worker_memory(env_name: str, envs: int, rounds: int) -> list[tuple[int, int, int, float]]:
    """Memory of one sampler worker's env slots as training goes: per checkpoint (rounds of
    trials, metaworld envs held, metaworld envs one per slot and class would hold, RSS MiB).
    Measured in a fresh process that steps the slots as a worker does."""
    from trmrl.envs import make_suite
    context = mp.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_memory_child, args=(env_name, envs, rounds, results))
    child.start()
    measured = []
    while (row := results.get()) is not None:
        measured.append(row)
    child.join()
    # the same tasks, counted for envs that kept one metaworld env per class they ran
    suite, rng = make_suite(env_name), np.random.default_rng(0)
    first_class = next(iter(suite.class_dicts()[0]))
    seen = [{first_class} for _ in range(envs)]
    per_slot_and_class = {0: envs}
    for done in range(1, rounds + 1):
        for slot, task in enumerate(suite.sample_tasks(rng, envs, seed=0)):
            seen[slot].add(task.params["env_name"])
        per_slot_and_class[done] = sum(len(classes) for classes in seen)
    return [(done, held, per_slot_and_class[done], mib) for done, held, mib in measured]


def metaworld_main(args) -> None:
    import metaworld

    from trmrl.envs import make_suite
    suite = make_suite(args.env)
    if not hasattr(suite, "metaworld_task"):
        raise SystemExit(f"--bare-metaworld needs a Meta-World suite, got --env {args.env}")
    cpu = allowed_cpus()[0]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})  # both loops on one core, as the target asks
    envs = args.envs or 8
    tasks = suite.sample_tasks(np.random.default_rng(0), envs, seed=0)
    version = getattr(metaworld, "__version__", None)
    if version is None:
        from importlib.metadata import version as installed
        version = installed("metaworld")
    print(f"# Meta-World stepping on one core (CPU {cpu}): {args.env} ({suite.base}), metaworld "
          f"{version}, {envs} envs (classes: {len({t.params['env_name'] for t in tasks})}), "
          f"trials of one {suite.horizon}-step episode, random actions")
    print(f"# {platform.processor() or platform.machine()}; python {platform.python_version()}, "
          f"numpy {np.__version__}; load average before: {os.getloadavg()[0]:.2f}")
    bare, ours, rate_ratio, cpu_ratio, pairs = paired_metaworld_rates(args.env, tasks, args.steps)
    print(f"  {'':<44} {'env steps/s':>12} {'CPU us/step':>12}")
    for label, measured in (("bare loop over metaworld's own env.step", bare),
                            ("ours, TrialSampler in-process (0 workers)", ours)):
        print(f"  {label:<44} {measured.rate:>12,.0f} {measured.cpu_us:>12.1f}")
    spent = ours.timings
    print(f"  time of ours: envs {spent['envs'] / spent['total']:.1%} (metaworld's step, our "
          f"step_batch and slot bookkeeping), policy {spent['policy'] / spent['total']:.1%}, "
          f"sampler {(spent['total'] - spent['policy'] - spent['envs']) / spent['total']:.1%}")
    print(f"# ratios (target: ours >= 0.9 of bare), over all trials and as the median of {pairs} "
          "pairs of trials run in turn")
    print(f"  ours / bare, env steps/s        {ours.rate / bare.rate:.3f}   median {rate_ratio:.3f}")
    print(f"  bare / ours, CPU time per step  {bare.cpu_us / ours.cpu_us:.3f}   median {cpu_ratio:.3f}"
          "   (CPU time: little disturbed by other load)")
    if args.worker_memory:
        print(f"# memory of one sampler worker's {envs} env slots as training goes (train tasks "
              "drawn uniformly; a process of their own, stepping them as a worker does)")
        print(f"  {'rounds of trials':>16} {'metaworld envs held':>20} {'(one per slot and class)':>25}"
              f" {'RSS GiB':>8}")
        rows = worker_memory(args.env, envs, args.memory_rounds)
        for done, held, per_slot_and_class, mib in rows:
            print(f"  {done:>16} {held:>20} {per_slot_and_class:>25} {mib / 1024:>8.2f}")
        (_, held_0, _, mib_0), (_, held_n, _, mib_n) = rows[0], rows[-1]
        if held_n > held_0:
            print(f"  RSS per metaworld env: {(mib_n - mib_0) / (held_n - held_0):.1f} MiB")
    print(f"# load average after: {os.getloadavg()[0]:.2f}")


# ---------------------------------------------------------------------------------------
def main() -> None:
    cpus = allowed_cpus()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="cheetah-vel", help="a suite name (trmrl envs)")
    parser.add_argument("--workers", type=int, default=len(cpus),
                        help="sampler worker processes (default: one per allowed CPU)")
    parser.add_argument("--envs", type=int, default=None,
                        help="env slots of our sampler and envs of AsyncVectorEnv (default: 16 per worker)")
    parser.add_argument("--steps", type=int, default=200_000,
                        help="env steps per measurement (raw physics: a quarter, per process)")
    parser.add_argument("--gym-id", default=None,
                        help="run AsyncVectorEnv on this gymnasium env (e.g. HalfCheetah-v5) "
                             "instead of ours")
    parser.add_argument("--async-envs", type=int, default=None,
                        help="envs of AsyncVectorEnv, one process each (default: --envs)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="measure everything this many times, report the fastest (shared machines)")
    parser.add_argument("--bare-metaworld", action="store_true",
                        help="Meta-World: metaworld's own env.step loop against our sampler "
                             "in-process, on one core, trial by trial in turn (--envs: default "
                             "8; --steps: env steps of each)")
    parser.add_argument("--worker-memory", action="store_true",
                        help="with --bare-metaworld: the RSS of a sampler worker's --envs slots "
                             "and the metaworld envs they hold, over --memory-rounds rounds")
    parser.add_argument("--memory-rounds", type=int, default=200,
                        help="rounds of trials (train tasks drawn as training draws them) for "
                             "--worker-memory")
    args = parser.parse_args()
    if args.bare_metaworld:
        metaworld_main(args)
        return
    envs = args.envs or 16 * max(args.workers, 1)
    async_envs = args.async_envs or envs
    cores = len(cpus)

    import gymnasium
    import mujoco
    from trmrl.envs import make_suite
    suite = make_suite(args.env)
    _, _, frame_skip = physics(args.env)
    print(f"# sampler throughput: {args.env} ({suite.base}, frame skip {frame_skip}, "
          f"horizon {suite.horizon}), random actions, fastest of {args.repeats}")
    cpu_list = ", ".join(map(str, cpus)) if cores <= 8 else f"{cpus[0]}..{cpus[-1]}"
    print(f"# {cores} CPUs ({cpu_list}; {platform.processor() or platform.machine()}); python "
          f"{platform.python_version()}, mujoco {mujoco.__version__}, gymnasium {gymnasium.__version__}, "
          f"numpy {np.__version__}")
    print(f"# load average before: {os.getloadavg()[0]:.2f} (other work on these CPUs lowers the rates)")

    raw_steps, small = max(args.steps // 4, 10_000), min(envs, 16)
    peer = args.gym_id or f"{args.env} under TimeLimit"
    measurements = {  # key -> (label, function returning a Measured)
        "raw1": ("raw physics, 1 process on 1 core",
                 lambda: raw_rate(args.env, cpus[:1], raw_steps, suite.horizon)),
        "raw": (f"raw physics, {cores} processes on {cores} cores",
                lambda: raw_rate(args.env, cpus, raw_steps, suite.horizon)),
        "local": (f"ours, in-process (0 workers), {small} envs",
                  lambda: sampler_rate(args.env, 0, small, max(args.steps // 4, 1))),
        "ours": (f"ours, {args.workers} workers, {envs} envs",
                 lambda: sampler_rate(args.env, args.workers, envs, args.steps)),
        "async": (f"AsyncVectorEnv, {async_envs} envs ({peer})",
                  lambda: async_rate(args.env, async_envs, args.steps, args.gym_id)),
    }
    if async_envs != cores:  # AsyncVectorEnv's usual setting: one env (process) per core
        measurements["async_cores"] = (f"AsyncVectorEnv, {cores} envs ({peer})",
                                       lambda: async_rate(args.env, cores, args.steps, args.gym_id))
    best: dict[str, Measured] = {}
    for _ in range(args.repeats):
        for key, (_, measure) in measurements.items():
            result = measure()
            if key not in best or result.rate > best[key].rate:
                best[key] = result

    print(f"  {'':<58} {'env steps/s':>12} {'CPU us/step':>12}")
    for key, (label, _) in measurements.items():
        print(f"  {label:<58} {best[key].rate:>12,.0f} {best[key].cpu_us:>12.1f}")
    for key in ("local", "ours"):
        spent = best[key].timings
        other = spent["total"] - spent["policy"] - spent["envs"]
        print(f"  time of {measurements[key][0]}: envs {spent['envs'] / spent['total']:.0%} "
              f"(stepping, or waiting for workers), policy {spent['policy'] / spent['total']:.0%}, "
              f"sampler bookkeeping {other / spent['total']:.0%}")

    ours, raw1 = best["ours"].rate, best["raw1"].rate
    async_best = max(best["async"].rate, best["async_cores"].rate if "async_cores" in best else 0.0)
    print("# ratios")
    rows = [(f"ours / ({cores} x single-core raw)", f"{ours / (cores * raw1):.2f}", "target >= 0.40 on 16 cores"),
            (f"ours / raw on {cores} cores at once", f"{ours / best['raw'].rate:.2f}", ""),
            ("in-process / single-core raw", f"{best['local'].rate / raw1:.2f}",
             "what the env's own Python costs"),
            ("raw CPU / ours CPU per step", f"{best['raw1'].cpu_us / best['ours'].cpu_us:.2f}",
             "efficiency, little disturbed by other load"),
            (f"ours / AsyncVectorEnv ({async_envs} envs)", f"{ours / best['async'].rate:.1f}x", "target >= 5x")]
    if "async_cores" in best:
        rows.append(("ours / AsyncVectorEnv at its fastest", f"{ours / async_best:.1f}x", ""))
    for label, value, note in rows:
        print(f"  {label:<40} {value:>7}   {note}")
    print(f"# load average after: {os.getloadavg()[0]:.2f} (this run's own processes count in it, "
          f"AsyncVectorEnv's {async_envs} most)")


if __name__ == "__main__":
    main()
