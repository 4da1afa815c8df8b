"""profiles/slurm on a real SLURM (`pytest -m slurm`): a one-node cluster started on this
machine (tests/slurm_cluster.py) runs the quick preset through sbatch, and a training job that
is scancelled mid-run is submitted again and resumes from its checkpoint. (That a real error
is not retried is the train rule's doing, the same without SLURM: test_slurm_profile.py.)

Needs root, Debian's slurm-wlm and munge, and snakemake-executor-plugin-slurm: skipped, with
the reason, where they are missing, except in CI (`CI` set), where that is a failure.
`.ci/run` installs them and runs this file. The cluster has no job accounting, so the
profile's `slurm-status-command: squeue` is what makes snakemake see jobs end (MinJobAge 600 s).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from slurm_cluster import SlurmCluster, unavailable_reason

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+)")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the SLURM test, but {reason}")
        pytest.skip(reason)
    with SlurmCluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def workflow_copy(dest: Path, config: dict) -> Path:
    """The workflow in `dest`, with `config` as slurm.yaml."""
    for name in ["Snakefile", "workflow", "config", "profiles", "environment.yml"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / "slurm.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def quick_config(**changes) -> dict:
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(changes)
    return config


def snakemake_command(*args: str) -> list[str]:
    # the shipped profile as it is; only the first status check comes sooner than its 40 s
    return [sys.executable, "-m", "snakemake", *args, "--workflow-profile", "profiles/slurm",
            "--configfile", "slurm.yaml", "--slurm-init-seconds-before-status-checks", "2"]


def train_jobs(cluster: SlurmCluster, env: str, agent: str, seed: int,
               exclude: set[str]) -> dict[str, str]:
    """{job id: state} of the train jobs of one run that slurmctld knows, but `exclude`."""
    comment = f"rule_train_wildcards_{env}_{agent}_{seed}_"
    return {job_id: job["state"] for job_id, job in cluster.jobs().items()
            if job["comment"] == comment and job_id not in exclude}


def read_rows(path: Path) -> list[dict]:
    with open(path) as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------
def test_quick_preset_runs_through_sbatch(cluster, tmp_path):
    """The quick preset (one env, one seed, one ablation study, tiny budgets): every train
    and evaluate job is a SLURM job, tables, figures and the report are built locally."""
    config = quick_config(experiment="slurm", envs=["cheetah-vel"], seeds=[0], steps=3200,
                          ablations={"agent": "trmrl", "env": "cheetah-vel", "seeds": [0],
                                     "studies": {"layers": {"layers": [1, 2]}}})
    config["hyperparameters"]["all"]["default"]["eval_tasks"] = 4
    workdir = workflow_copy(tmp_path, config)
    dry = subprocess.run(snakemake_command("all", "-n"), cwd=workdir, capture_output=True,
                         text=True, timeout=300)
    remote = re.findall(r"^rule (train|evaluate_adaptation|evaluate_ood):", dry.stdout, re.M)
    assert remote, dry.stdout[-3000:] + dry.stderr[-3000:]

    started = time.monotonic()
    result = subprocess.run(snakemake_command("all"), cwd=workdir, capture_output=True,
                            text=True, timeout=1800)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:] + cluster.logs()

    # every train / evaluate job went through sbatch and completed there; nothing else did
    job_ids = SUBMITTED.findall(output)
    assert len(job_ids) == len(set(job_ids)) == len(remote), output[-4000:]
    jobs = cluster.jobs()
    assert {jobs[i]["state"] for i in job_ids} == {"COMPLETED"}
    rules = Counter(re.match(r"rule_(\w+?)_wildcards_", jobs[i]["comment"]).group(1)
                    for i in job_ids)
    assert rules == Counter(remote)
    assert re.search(r"^localrule figure_training_curves:", output, re.M)
    assert re.search(r"^localrule aggregate_scores:", output, re.M)

    results = workdir / "results" / "slurm"
    for name in ["fig1_training_curves", "fig2_adaptation", "fig3_ood", "fig4_ablations",
                 "fig5_latent_map", "fig6_aggregate"]:
        assert (results / "figures" / f"{name}.png").stat().st_size > 5000, name
    report = (results / "report.html").read_text()  # our page: figures embedded as PNG data
    assert report.count("data:image/png;base64,") >= 6 and 'href="provenance.html"' in report
    assert "fig6_aggregate.png" in (results / "provenance.html").read_text()  # Snakemake's
    print(f"quick preset through SLURM: {len(job_ids)} sbatch jobs, "
          f"{time.monotonic() - started:.0f} s")


def test_cancelled_training_job_is_retried_and_resumes(cluster, tmp_path):
    """scancel a training job mid-run: SLURM sends SIGTERM, `trmrl train` checkpoints the
    iteration and stops, snakemake submits the job again (profile `retries`) and the run
    resumes where it stopped: no restart, no duplicated rows."""
    config = quick_config(experiment="preempt", agents=["memoryless"], envs=["cheetah-vel"],
                          seeds=[0], steps=16_000, ablations={})
    # no periodic checkpoint: a resume past step 0 proves the SIGTERM checkpoint
    config["hyperparameters"]["all"]["default"].update(checkpoint_every_s=3600,
                                                       eval_every=100_000, eval_tasks=4)
    config["resources"]["train"]["cpus"] = 2  # -> --cpus-per-task=2 -> OMP_NUM_THREADS=2
    workdir = workflow_copy(tmp_path, config)
    run = workdir / "results" / "preempt" / "runs" / "cheetah-vel" / "memoryless" / "seed0"
    earlier = set(cluster.jobs())  # of other tests, which may have trained the same run names

    log_path = tmp_path / "snakemake.out"
    with open(log_path, "w") as log:
        target = "results/preempt/runs/cheetah-vel/memoryless/seed0/train.done"
        process = subprocess.Popen(snakemake_command(target), cwd=workdir, stdout=log,
                                   stderr=subprocess.STDOUT)
    try:
        # cancel once two iterations are written (one train row per episode index, K=2)
        deadline = time.monotonic() + 300
        cancelled = None
        while time.monotonic() < deadline and cancelled is None:
            progress = run / "progress.csv"
            trained = [r for r in read_rows(progress) if r["split"] == "train"] \
                if progress.exists() else []
            jobs = train_jobs(cluster, "cheetah-vel", "memoryless", 0, earlier)
            running = [job_id for job_id, state in jobs.items() if state == "RUNNING"]
            if len(trained) >= 4 and running:
                cluster.run("scancel", running[0])
                cancelled, steps_at_cancel = running[0], int(trained[-1]["env_steps"])
            time.sleep(0.2)
        assert cancelled, "the training job did not get going:\n" + log_path.read_text()[-4000:]
        process.wait(timeout=900)
    finally:
        if process.poll() is None:
            process.terminate()  # snakemake cancels its SLURM jobs
            process.wait(timeout=120)
    output = log_path.read_text()
    assert process.returncode == 0, output[-6000:] + cluster.logs()

    # the cancelled job was submitted again and resumed from the SIGTERM checkpoint
    jobs = train_jobs(cluster, "cheetah-vel", "memoryless", 0, earlier)
    assert jobs.pop(cancelled) == "CANCELLED"
    assert list(jobs.values()) == ["COMPLETED"], jobs
    assert set(jobs) | {cancelled} <= set(SUBMITTED.findall(output))
    log = (workdir / "results" / "preempt" / "logs" / "train" / "cheetah-vel" / "memoryless" /
           "seed0.log").read_text()
    resumed = re.search(r"resuming \S+ at env step (\d+) of 16000, device cpu, 2 CPU threads", log)
    assert resumed, log
    assert int(resumed.group(1)) >= steps_at_cancel > 0  # nothing written before it was lost
    rows = read_rows(run / "progress.csv")
    keys = [(r["env_steps"], r["split"], r["episode"]) for r in rows]
    assert len(keys) == len(set(keys)), "duplicated progress rows"
    train_steps = [int(r["env_steps"]) for r in rows if r["split"] == "train" and
                   r["episode"] == "0"]
    assert train_steps == sorted(train_steps) and train_steps[-1] >= 16_000
    iterations = [int(r["iteration"]) for r in read_rows(run / "metrics.csv")]
    assert iterations == list(range(1, len(iterations) + 1))
    assert (run / "train.done").exists()
