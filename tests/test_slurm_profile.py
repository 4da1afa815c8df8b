"""profiles/slurm without a cluster (fast, no root): its keys, what the jobs ask SLURM for, the
checks that reject bad input before anything is submitted, and the train rule's retries.

The SLURM side is faked: scripts named sinfo, scontrol, sbatch, ... on PATH answer like a
cluster with a CPU and a GPU partition, and sbatch records its arguments and fails. A real
single-node cluster runs the workflow in tests/test_slurm.py (`pytest -m slurm`).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PROFILE = REPO / "profiles" / "slurm" / "config.yaml"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="snakemake-executor-plugin-slurm is not installed: pip install -e '.[slurm]'")

# The quick preset cut to one env, one seed and no ablations: one train job per agent
SMALL = {"experiment": "small", "envs": ["cheetah-vel"], "seeds": [0],
         "ablations": {"seeds": [0], "studies": {}}}


def snakemake(workdir: Path, *args: str, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture
def workdir(tmp_path) -> Path:
    """A copy of the workflow with a small config and a copy of the SLURM profile to edit."""
    for name in ["Snakefile", "workflow", "config", "profiles", "environment.yml"]:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, tmp_path / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, tmp_path / name)
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(SMALL)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return tmp_path


# A cluster of two partitions: `cpu` (the default) and `gpu` with four A100s per node, no
# accounting, MinJobAge 600 s
SINFO = "cpu*|(null)\ngpu|gpu:a100:4(S:0-1)\n"
SCONTROL = ("AccountingStorageType   = accounting_storage/none\n"
            "MaxArraySize            = 1001\n"
            "MinJobAge               = 600 sec\n")
FAKE_COMMANDS = {
    "sinfo": """case "$*" in *%G*) cat "$FAKE_SLURM/sinfo";; *) echo PARTITION;
                cut -d'|' -f1 "$FAKE_SLURM/sinfo";; esac""",
    "scontrol": 'cat "$FAKE_SLURM/scontrol"',
    "squeue": "exit 0",
    "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1",
    "sacctmgr": "exit 1",
    "sshare": "exit 1",
    "scancel": "exit 0",
    "sbatch": """echo "$*" >> "$FAKE_SLURM/sbatch.calls"; echo 'sbatch: error: fake' >&2; exit 1""",
}


@pytest.fixture
def fake_slurm(tmp_path):
    """`.env`: the fake SLURM commands first on PATH; `.answers`: what they answer (sinfo,
    scontrol) and the sbatch calls they recorded."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, body in FAKE_COMMANDS.items():
        script = folder / name
        script.write_text(f"#!/bin/bash\n{body}\n")
        script.chmod(0o755)
    answers = tmp_path / "fake-slurm-answers"
    answers.mkdir()
    (answers / "sinfo").write_text(SINFO)
    (answers / "scontrol").write_text(SCONTROL)
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}",
           "FAKE_SLURM": str(answers)}
    env.pop("SNAKEMAKE_PROFILE", None)
    return SimpleNamespace(env=env, answers=answers)


def edit_profile(workdir: Path, changes: dict) -> None:
    """Set top-level keys of the workdir's profiles/slurm/config.yaml."""
    path = workdir / "profiles" / "slurm" / "config.yaml"
    profile = yaml.safe_load(path.read_text())
    profile.update(changes)
    path.write_text(yaml.safe_dump(profile, sort_keys=False))


def submit(workdir: Path, fake, *args: str) -> str:
    """`snakemake runs` with profiles/slurm against the fake cluster; its whole output."""
    # (no retries and no 40 s wait for the first status check, for speed)
    result = snakemake(workdir, "runs", "--workflow-profile", "profiles/slurm", "--configfile",
                       "small.yaml", "--retries", "0",
                       "--slurm-init-seconds-before-status-checks", "1", *args, env=fake.env)
    return result.stdout + result.stderr


def sbatch_calls(fake) -> list[str]:
    calls = fake.answers / "sbatch.calls"
    return calls.read_text().splitlines() if calls.exists() else []


# ---------------------------------------------------------------------------------------
def test_profile_keys_are_snakemake_options():
    from snakemake.cli import get_argument_parser

    options = get_argument_parser()._option_string_actions
    profile = yaml.safe_load(PROFILE.read_text())
    assert [key for key in profile if f"--{key}" not in options] == []
    assert profile["executor"] == "slurm" and profile["slurm-status-command"] == "squeue"
    assert profile["retries"] >= 1 and profile["jobs"] >= 1 and profile["keep-going"]


def test_jobs_ask_for_their_cpus_and_a_gpu_when_on_cuda(workdir):
    """A dry run shows each job's resources: cpus_per_task = threads (-> OMP_NUM_THREADS),
    a GPU for train and evaluate jobs only when the config runs them on cuda."""
    args = ("runs", "-n", "--workflow-profile", "profiles/slurm", "--configfile", "small.yaml")
    cpu = snakemake(workdir, *args)
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    jobs = re.findall(r"rule (train|evaluate_\w+):.*?resources: ([^\n]*)", cpu.stdout, re.S)
    assert {rule for rule, _ in jobs} == {"train", "evaluate_adaptation", "evaluate_ood"}
    assert all("cpus_per_task=1" in res and "gpu=0" in res for _, res in jobs), jobs
    cuda = snakemake(workdir, *args, "--config", "device=cuda")
    jobs = re.findall(r"rule (train|evaluate_\w+):.*?resources: ([^\n]*)", cuda.stdout, re.S)
    assert jobs and all("gpu=1" in res for _, res in jobs), jobs


def test_a_good_profile_reaches_sbatch_with_the_jobs_resources(workdir, fake_slurm):
    """No false alarms: the shipped profile passes the checks, and sbatch gets the partition,
    CPUs, memory and time of each job; on cuda with a GPU partition and model, --gpus."""
    output = submit(workdir, fake_slurm, "--config", "device=cuda",
                    "--set-resources", "train:slurm_partition=gpu", "train:gpu_model=a100",
                    "evaluate_adaptation:slurm_partition=gpu", "evaluate_ood:slurm_partition=gpu")
    assert "does not fit" not in output, output[-3000:]
    calls = sbatch_calls(fake_slurm)
    train = [call for call in calls if "rule_train_" in call]
    assert train, output[-3000:]
    assert all(re.search(r"-p gpu\b", call) and "--gpus=a100:1" in call and
               "--cpus-per-task=1" in call and "--mem 2000" in call and "-t 30" in call
               for call in train), train


@pytest.mark.parametrize("edit, sinfo, cuda, messages", [
    ({"default-resources": {"slurm_partition": "gpus"}}, SINFO, False,
     ["`default-resources: slurm_partition`: unknown partition 'gpus'; this cluster's "
      "partitions: cpu, gpu"]),
    ({}, SINFO.replace("*", ""), False,
     ["`default-resources: slurm_partition` is not set and this cluster has no default "
      "partition; set it to one of cpu, gpu"]),
    ({"set-resources": {"train": {"slurm_partition": "gpu", "gpu_model": "h200"},
                        "evaluate_adaptation": {"slurm_partition": "gpu"},
                        "evaluate_ood": {"slurm_partition": "gpu"}}}, SINFO, True,
     ["`set-resources: train: gpu_model`: unknown GPU model 'h200' in partition 'gpu'; its "
      "GPU models: a100"]),
    ({"set-resources": {"train": {"gpu_model": "a100"}}}, SINFO, True,
     ["train jobs ask for a GPU (`device: cuda`), but partition 'cpu' has none; set "
      "`default-resources: slurm_partition` to a partition with GPUs: gpu",
      "evaluate_adaptation jobs ask for a GPU"]),
    ({"default-resource": {"slurm_partition": "cpu"},  # a mapping: snakemake would ignore it
      "default-resources": {"slurm_partiton": "cpu", "mem_mb": 4000},
      "set-resources": {"trian": {"runtime": 5}},
      "slurm-status-command": "sacct"}, SINFO, False,
     ["config.yaml: `default-resource` is no snakemake option; did you mean default-resources?",
      "`default-resources: slurm_partiton`: unknown resource 'slurm_partiton' (did you mean "
      "slurm_partition?",
      "`set-resources: trian` names no rule of this workflow (did you mean train?",
      "`slurm-status-command: sacct` waits forever on this cluster, which has no job "
      "accounting (AccountingStorageType=accounting_storage/none): use "
      "`slurm-status-command: squeue`"]),
], ids=["unknown-partition", "no-default-partition", "unknown-gpu-model", "gpu-on-cpu-partition",
        "typos-and-sacct"])
def test_bad_input_is_rejected_before_submission(workdir, fake_slurm, edit, sinfo, cuda,
                                                 messages):
    edit_profile(workdir, edit)
    (fake_slurm.answers / "sinfo").write_text(sinfo)
    output = submit(workdir, fake_slurm, *(["--config", "device=cuda"] if cuda else []))
    assert "does not fit this cluster or config; nothing was submitted" in output, output[-3000:]
    for message in messages:
        assert message in output, output[-3000:]
    assert sbatch_calls(fake_slurm) == []


def test_a_misspelt_option_names_the_key(workdir, fake_slurm):
    edit_profile(workdir, {"retires": 3})
    output = submit(workdir, fake_slurm)
    assert "unrecognized arguments: --retires=3" in output, output[-2000:]
    assert sbatch_calls(fake_slurm) == []


def test_slurm_profile_given_with_profile_hits_default_cores(workdir, fake_slurm):
    """--profile profiles/slurm also reads profiles/default (`cores: all`), which would cap
    the cluster jobs at this machine's core count."""
    config = yaml.safe_load((workdir / "small.yaml").read_text())
    config["resources"]["train"]["cpus"] = 10_000
    (workdir / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    result = snakemake(workdir, "runs", "--profile", "profiles/slurm", "--configfile",
                       "small.yaml", env=fake_slurm.env)
    output = result.stdout + result.stderr
    assert "caps the cluster jobs at" in output and "use --workflow-profile profiles/slurm" \
        in output, output[-3000:]
    assert sbatch_calls(fake_slurm) == []


# ---------------------------------------------------------------------------------------
# retries: a real error is not repeated (local executor: the rule does it, not SLURM)
# ---------------------------------------------------------------------------------------
def test_a_real_error_fails_once_and_the_rest_goes_on(workdir):
    config = yaml.safe_load((workdir / "small.yaml").read_text())
    config.update(agents=["oracle", "memoryless"], steps=3200)
    (workdir / "small.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # a run directory that belongs to another run: `trmrl train` exits 2, every time
    broken = workdir / "results" / "small" / "runs" / "cheetah-vel" / "oracle" / "seed0"
    broken.mkdir(parents=True)
    (broken / "config.yaml").write_text(yaml.safe_dump(
        {"agent": "oracle", "env": "cheetah-vel", "seed": 7, "hyperparameters": {}}))
    runs = workdir / "results" / "small" / "runs" / "cheetah-vel"
    targets = [f"results/small/runs/cheetah-vel/{agent}/seed0/train.done"
               for agent in ("oracle", "memoryless")]
    result = snakemake(workdir, *targets, "--cores", "2", "--configfile", "small.yaml",
                       "--retries", "2", "--keep-going")
    assert result.returncode != 0
    logs = workdir / "results" / "small" / "logs" / "train" / "cheetah-vel"
    log = (logs / "oracle" / "seed0.log").read_text()
    # the error once (the retries did not run trmrl again), then why it was not retried
    assert log.count("holds a run of agent=oracle env=cheetah-vel seed=7") == 1, log
    assert log.splitlines()[-1].startswith("not retried: an earlier attempt failed"), log
    assert (logs / "oracle" / "seed0.log.failed").exists()
    # --keep-going: the other run trained
    assert (runs / "memoryless" / "seed0" / "train.done").exists()
