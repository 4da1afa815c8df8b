"""GPU slots and CPU sets of local train / evaluate jobs (workflow/scripts/run_job.py), on CPU:
the GPUs are fake ids (`gpus: [0, 1]`, and an `nvidia-smi` on PATH that lists two), the jobs
are small Python programs that record the CUDA_VISIBLE_DEVICES and the CPUs they were given.
Then the config's bad values, which stop the workflow before any job.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
RUN_JOB = REPO / "workflow" / "scripts" / "run_job.py"
WAIT_S = 60  # how long a test waits for jobs to reach a state before it fails, not a timing

# A job: records what it was given and what else runs next to it, in `state`/running while it
# runs, then waits for `state`/go (or forever) and leaves its record in `state`/done.
JOB = r"""
import json, os, sys, time
from pathlib import Path

state, name = Path(sys.argv[1]), sys.argv[2]
record = {"name": name, "pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "cpus": sorted(os.sched_getaffinity(0)), "omp": os.environ.get("OMP_NUM_THREADS")}
marker = state / "running" / f"{name}.json"
partial = marker.with_suffix(".tmp")
partial.write_text(json.dumps(record))
partial.rename(marker)  # whole files only, for the jobs that read it
others = []
for path in (state / "running").glob("*.json"):
    try:
        others += [json.loads(path.read_text())] if path != marker else []
    except FileNotFoundError:  # that job has just finished
        pass
record["jobs_on_gpu"] = 1 + sum(other["gpu"] == record["gpu"] for other in others)
record["shared_cpus"] = sorted(set(record["cpus"]) & {c for o in others for c in o["cpus"]})
give_up = time.monotonic() + 600  # a test that failed without killing it: no orphan for long
try:
    while not (state / "go").exists():
        if time.monotonic() > give_up:
            sys.exit(3)
        time.sleep(0.02)
except KeyboardInterrupt:
    sys.exit(130)
marker.unlink()
(state / "done" / f"{name}.json").write_text(json.dumps(record))
"""


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
@pytest.fixture
def run_job(monkeypatch):
    """workflow/scripts/run_job.py as a module, seeing no CUDA driver (ids are fake here)."""
    monkeypatch.syspath_prepend(str(RUN_JOB.parent))
    sys.modules.pop("run_job", None)
    import run_job

    monkeypatch.setattr(run_job, "cuda_device_count", lambda: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return run_job


def fake_nvidia_smi(directory: Path, gpus: int) -> Path:
    """A folder with an `nvidia-smi` that lists `gpus` GPUs (none: exits 6, as the real one)."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = "".join(f'echo "GPU {i}: Fake GPU (UUID: GPU-fake-{i})"\n' for i in range(gpus))
    body = lines or 'echo "No devices were found"; exit 6\n'
    script = directory / "nvidia-smi"
    script.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] || exit 1\n{body}')
    script.chmod(0o755)
    return directory


def job_environment(tmp_path: Path, gpus: int = 2) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PATH"] = f"{fake_nvidia_smi(tmp_path / 'bin', gpus)}:{env['PATH']}"
    return env


def start_jobs(tmp_path: Path, count: int, *options: str, first: int = 0) -> tuple[Path, list]:
    """`count` jobs through run_job.py at once (job<first>, ...), each in a process group of
    its own."""
    state = tmp_path / "state"
    for folder in ("running", "done", "logs"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / "job.py").write_text(JOB)
    env = job_environment(tmp_path)
    processes = [subprocess.Popen(
        [sys.executable, str(RUN_JOB), *options, "--slots", str(tmp_path / "slots"),
         "--log", str(state / "logs" / f"job{i}.log"), "--",
         sys.executable, str(tmp_path / "job.py"), str(state), f"job{i}"],
        env=env, start_new_session=True,
        # Ctrl-C's default action, even where pytest was started with SIGINT ignored (`&`)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        for i in range(first, first + count)]
    return state, processes


def kill_groups(processes: list) -> None:
    """SIGKILL to each job's process group: its wrapper and the job, also where the wrapper
    is gone (a test that failed after killing it)."""
    for process in processes:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def wait_until(condition, what: str):
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def running(state: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((state / "running").glob("*.json"))]


def waiting(state: Path) -> int:
    """Jobs whose log says they wait for a slot or CPUs."""
    return sum("run_job: waiting for" in path.read_text()
               for path in (state / "logs").glob("*.log"))


def held(slots: Path) -> list[str]:
    """The lock files that some process holds now."""
    names = []
    for path in sorted(slots.glob("*.lock")):
        with open(path) as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                names.append(path.name)
    return names


def finish(state: Path, processes: list) -> list[dict]:
    (state / "go").touch()
    for process in processes:
        assert process.wait(timeout=WAIT_S) == 0
    return [json.loads(path.read_text()) for path in sorted((state / "done").glob("*.json"))]


# ---------------------------------------------------------------------------------------
# the allocator: 8 jobs on 2 fake GPUs x 2 slots
# ---------------------------------------------------------------------------------------
def test_eight_jobs_fill_two_gpus_two_slots_each_and_never_more(tmp_path):
    state, processes = start_jobs(tmp_path, 8, "--threads", "1", "--gpus", "0,1",
                                  "--jobs-per-gpu", "2")
    try:
        wait_until(lambda: len(running(state)) + waiting(state) == 8,
                   "every job running or waiting for a slot")
        first = running(state)
        assert len(first) == 4, first
        # the first four spread over both GPUs, two each
        assert sorted(job["gpu"] for job in first) == ["0", "0", "1", "1"]
        records = finish(state, processes)
    finally:
        kill_groups(processes)
    assert len(records) == 8
    assert {job["gpu"] for job in records} == {"0", "1"}
    assert max(job["jobs_on_gpu"] for job in records) <= 2, records
    assert all(job["omp"] == "1" for job in records)
    assert held(tmp_path / "slots") == []


def test_jobs_spread_over_the_gpus(tmp_path):
    """A second job goes to the idle GPU, not to the free slot next to the first job."""
    options = ("--threads", "1", "--gpus", "0,1", "--jobs-per-gpu", "2")
    state, processes = start_jobs(tmp_path, 1, *options)
    try:
        wait_until(lambda: len(running(state)) == 1, "the first job running")
        processes += start_jobs(tmp_path, 1, *options, first=1)[1]
        wait_until(lambda: len(running(state)) == 2, "the second job running")
        assert sorted(job["gpu"] for job in running(state)) == ["0", "1"]
        finish(state, processes)
    finally:
        kill_groups(processes)


def test_concurrent_jobs_run_on_cpus_of_their_own(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    threads = 2 if len(allowed) >= 4 else 1
    at_once = len(allowed) // threads
    state, processes = start_jobs(tmp_path, 8, "--pin", "--threads", str(threads),
                                  "--gpus", "0,1", "--jobs-per-gpu", "2")
    try:
        wait_until(lambda: len(running(state)) == min(at_once, 4),
                   f"{min(at_once, 4)} jobs running on {len(allowed)} CPUs")
        first = running(state)
        cpus = [cpu for job in first for cpu in job["cpus"]]
        assert len(cpus) == len(set(cpus)) and set(cpus) <= set(allowed), first
        records = finish(state, processes)
    finally:
        kill_groups(processes)
    assert len(records) == 8
    for job in records:
        assert len(job["cpus"]) == threads and job["omp"] == str(threads), job
        assert job["shared_cpus"] == [], records
        assert job["jobs_on_gpu"] <= 2, records
    logs = [path.read_text() for path in (state / "logs").glob("*.log")]
    assert all("run_job: holds GPU " in log and ", CPUs " in log for log in logs), logs


@pytest.mark.parametrize("kill", ["group SIGKILL", "group SIGINT", "job SIGKILL",
                                  "wrapper SIGKILL, then the job"])
def test_every_slot_is_released_after_a_killed_job(tmp_path, kill):
    """A job's GPU slot and CPU are held while any of its processes lives, and free once it
    ends however it ends: killed with this wrapper (Ctrl-C of snakemake: SIGINT to the
    group), crashed alone, or outliving a wrapper that was killed."""
    state, (process,) = start_jobs(tmp_path, 1, "--pin", "--threads", "1", "--gpus", "0,1",
                                   "--jobs-per-gpu", "2")
    slots = tmp_path / "slots"
    try:
        wait_until(lambda: len(running(state)) == 1, "the job running")
        job = running(state)[0]
        assert held(slots) == sorted([f"cpu{job['cpus'][0]}.lock", "gpu0.slot0.lock"])
        if kill.startswith("group"):
            os.killpg(process.pid, signal.SIGKILL if "KILL" in kill else signal.SIGINT)
            status = process.wait(timeout=WAIT_S)
            assert status == (-signal.SIGKILL if "KILL" in kill else 130)
        elif kill == "job SIGKILL":
            os.kill(job["pid"], signal.SIGKILL)
            assert process.wait(timeout=WAIT_S) == 128 + signal.SIGKILL
        else:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=WAIT_S)
            # the job lives on and still holds what it was given
            assert held(slots) == sorted([f"cpu{job['cpus'][0]}.lock", "gpu0.slot0.lock"])
            os.kill(job["pid"], signal.SIGKILL)
        wait_until(lambda: held(slots) == [], "every slot released")
    finally:
        kill_groups([process])


# ---------------------------------------------------------------------------------------
# `gpus`: ids against the machine
# ---------------------------------------------------------------------------------------
def test_gpus_resolve_against_nvidia_smi_or_an_allocation(run_job, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin', 2)}:{os.environ['PATH']}")
    assert run_job.resolve_gpus("all") == ["0", "1"]
    assert run_job.resolve_gpus([1]) == ["1"]
    assert run_job.resolve_gpus("0,1") == ["0", "1"]
    with pytest.raises(run_job.SlotError, match=r"^invalid config at `gpus`: GPU 2 is not on "
                       r"this machine; `nvidia-smi -L` shows GPUs 0-1$"):
        run_job.resolve_gpus([0, 2])
    # inside an allocation (salloc) the ids count over its GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert run_job.resolve_gpus("all") == ["4", "6"]
    assert run_job.resolve_gpus([1]) == ["6"]
    with pytest.raises(run_job.SlotError, match="GPU 2 is not on this machine; "
                       "CUDA_VISIBLE_DEVICES=4,6 shows GPUs 0-1"):
        run_job.resolve_gpus([2])
    # no nvidia-smi, no CUDA: nothing tells, so `all` is no GPU and ids are taken as given
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert run_job.resolve_gpus("all") == []
    assert run_job.resolve_gpus([0, 7]) == ["0", "7"]


def test_a_repeated_gpu_id_is_an_error(run_job):
    for value in ([0, 0], "1,0,1"):
        with pytest.raises(run_job.SlotError, match=r"^invalid config at `gpus`: GPU \d is "
                           "listed twice"):
            run_job.parse_gpus(value)


def test_cpus_are_taken_one_per_physical_core_first(run_job, tmp_path):
    """On a machine with hyperthreads, jobs get the first thread of each core before any
    second one (the kernel's topology files, faked: CPUs 2k and 2k+1 share a core)."""
    for cpu in range(8):
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        first = cpu - cpu % 2
        (topology / "thread_siblings_list").write_text(f"{first}-{first + 1}\n")
    assert run_job.cpu_order(set(range(8)), tmp_path) == [0, 2, 4, 6, 1, 3, 5, 7]
    assert run_job.cpu_order({1, 3, 4, 5}, tmp_path) == [4, 1, 3, 5]
    # no topology files (some containers): every CPU alike, in order
    assert run_job.cpu_order({3, 1, 2}, tmp_path / "none") == [1, 2, 3]
    assert run_job.cpu_list([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


# ---------------------------------------------------------------------------------------
# the workflow: bad values stop it before any job; jobs run on their slots
# ---------------------------------------------------------------------------------------
def small_config(**changes) -> dict:
    """The quick preset cut to two cheap runs of one iteration each."""
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(experiment="slots", agents=["oracle", "memoryless"], envs=["cheetah-vel"],
                  seeds=[0], steps=3200, ablations={})
    config["hyperparameters"]["all"]["default"]["eval_tasks"] = 4
    config.update(changes)
    return config


def snakemake(workdir: Path, config: dict, env: dict, *targets: str) -> subprocess.CompletedProcess:
    (workdir / "slots.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return subprocess.run([sys.executable, "-m", "snakemake", *(targets or ["runs"]), "--cores",
                           "2", "-s", str(REPO / "Snakefile"), "--configfile", "slots.yaml"],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("change, gpus_found, message", [
    ({"gpus": [0, 0]}, 2, "invalid config at `gpus`: GPU 0 is listed twice in [0, 0]"),
    ({"gpus": "1,0,1"}, 2, "invalid config at `gpus`: GPU 1 is listed twice"),
    ({"jobs_per_gpu": 0}, 2, "invalid config at `jobs_per_gpu`: 0 is less than the minimum of 1"),
    ({"gpus": [0, 2]}, 2, "invalid config at `gpus`: GPU 2 is not on this machine; "
                          "`nvidia-smi -L` shows GPUs 0-1"),
    ({"device": "cuda:1", "gpus": [0, 1]}, 2, "invalid config at `gpus`: [0, 1] and `device: "
                                              "cuda:1` disagree"),
    ({}, 0, "invalid config at `device`: 'cuda' needs a GPU, but this machine has none "
            "(`nvidia-smi -L`)"),
], ids=["repeated", "repeated-string", "jobs_per_gpu-0", "unknown-id", "device-disagrees",
        "no-gpu"])
def test_bad_gpu_values_stop_the_workflow_before_any_job(tmp_path, change, gpus_found, message):
    result = snakemake(tmp_path, small_config(**{"device": "cuda", **change}),
                       job_environment(tmp_path, gpus_found))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in output.splitlines() if "invalid config" in line]
    assert len(lines) == 1 and message in lines[0], output[-3000:]
    assert not (tmp_path / "results" / "slots" / "logs").exists()  # no job started


def test_workflow_jobs_run_on_their_gpu_slot_and_cpus(tmp_path):
    """`device: auto` on a machine whose nvidia-smi lists two GPUs: the two train jobs, run at
    once, each hold a GPU slot and a CPU, as their logs say (on a CPU-only machine torch finds
    no CUDA, so they train on the CPU). Evaluate jobs start the same way (dry run)."""
    config = small_config(device="auto", gpus=[0, 1])
    env = job_environment(tmp_path, 2)
    result = snakemake(tmp_path, config, env,
                       *(f"results/slots/runs/cheetah-vel/{agent}/seed0/train.done"
                         for agent in ("oracle", "memoryless")))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logs = sorted((tmp_path / "results" / "slots" / "logs" / "train").rglob("*.log"))
    assert len(logs) == 2
    for log in logs:
        first = log.read_text().splitlines()[0]
        match = re.fullmatch(r"run_job: holds GPU [01] \(slot 1 of 1\), CPUs (\d+)", first)
        assert match and int(match.group(1)) in os.sched_getaffinity(0), first
    assert held(tmp_path / ".snakemake" / "slots") == []
    result = snakemake(tmp_path, config, env, "runs", "-n", "-p")
    evaluations = re.findall(r"\S*run_job.py ([^\n]*) -- trmrl evaluate", result.stdout)
    assert len(evaluations) == 4 and all(
        line.startswith("--pin --gpus 0,1 --jobs-per-gpu 1 --threads 1 --log ")
        for line in evaluations), result.stdout[-3000:]


@pytest.mark.parametrize("says, hinted", [
    ("trmrl: error: R was trained with other hyperparameters (layers: 4 -> 2); ...", True),
    ("trmrl: error: R is in use by pid 7 on host h (trmrl train)", False)])
def test_train_revision_hint_only_for_changed_hyperparameters(tmp_path, says, hinted):
    """A job that exits 2 gets the hint to bump train_revision only where `trmrl train`
    refused a run directory for its hyperparameters, not for a held lock or a bad path."""
    log = tmp_path / "job.log"
    command = [sys.executable, "-c", f"import sys; print({says!r}); sys.exit(2)"]
    result = subprocess.run([sys.executable, str(RUN_JOB), "--threads", "1", "--slots",
                             str(tmp_path / "slots"), "--log", str(log), "--attempt", "1", "--",
                             *command], capture_output=True, text=True)
    assert result.returncode == 2
    assert ("bump train_revision" in log.read_text()) == hinted
