"""SLURM (profiles/slurm): checks of the profile against the cluster, before any job is submitted.

Snakemake only knows the executor once the DAG is built, so the checks run in `onstart` (in the
Snakefile), which comes after that and before the first submission (not in dry runs, not inside
cluster jobs).
Each problem is one line naming the profile key (or config key) and what is valid; all of them
are reported at once. Nothing here runs for local execution.
"""

import difflib
import os
import subprocess
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

# Resources that snakemake or snakemake-executor-plugin-slurm read: any other name in the
# profile's default-resources / set-resources is a typo that would be silently ignored.
SLURM_RESOURCES = (
    "slurm_partition", "slurm_account", "runtime", "mem_mb", "mem_mb_per_cpu", "mem", "mem_mib",
    "disk_mb", "disk", "disk_mib", "tmpdir", "cpus_per_task", "cpus_per_gpu", "gpu", "gpu_model",
    "gres", "constraint", "qos", "slurm_extra", "nodes", "tasks", "tasks_per_node",
    "tasks_per_gpu", "mpi", "cluster", "clusters", "slurm_cluster",
)
# Without accounting, a finished job is visible to squeue for MinJobAge seconds only: snakemake
# must look within that time. The plugin checks at most every 180 s; SLURM's default is 300.
MIN_JOB_AGE_S = 300


def slurm_command(*command):
    """stdout of a SLURM client command; a WorkflowError naming it when it fails."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise WorkflowError(f"`{' '.join(command)}` failed ({error}): is this a SLURM login "
                            "node?") from None
    if result.returncode != 0:
        raise WorkflowError(f"`{' '.join(command)}` failed: {result.stderr.strip()}")
    return result.stdout


def cluster_facts():
    """What the checks need to know about the cluster: its configuration (scontrol) and its
    partitions with their GPUs (sinfo)."""
    config = {}
    for line in slurm_command("scontrol", "show", "config").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            config[key.strip()] = value.strip()
    partitions, default_partition, gpu_types, gpus_in = [], None, {}, set()
    # one line per partition and node group: "gpu*|gpu:a100:4(S:0-1),gpu:v100:2"
    for line in slurm_command("sinfo", "--noheader", "--format=%P|%G").splitlines():
        name, _, gres = line.partition("|")
        if name.endswith("*"):
            name = name[:-1]
            default_partition = name
        if name not in partitions:
            partitions.append(name)
        for item in gres.split(","):
            parts = item.split("(")[0].split(":")  # gpu[:type][:count]
            if parts[0] == "gpu":
                gpus_in.add(name)
                if len(parts) == 3 or (len(parts) == 2 and not parts[1].isdigit()):
                    gpu_types.setdefault(name, set()).add(parts[1])
    return {"config": config, "partitions": partitions, "default_partition": default_partition,
            "gpu_types": gpu_types, "gpus_in": gpus_in}


def seconds(value):
    """MinJobAge as scontrol prints it ("300 sec") in seconds; None if unreadable."""
    number = value.split()[0] if value else ""
    return int(number) if number.isdigit() else None


def profile_key(rule_name, key):
    """Where a job's resource `key` comes from, as the profile spells it."""
    overrides = workflow.resource_settings.overwrite_resources or {}
    if key in overrides.get(rule_name, {}):
        return f"set-resources: {rule_name}: {key}"
    return f"default-resources: {key}"


def user_resource_names():
    """(profile key, resource name) of every resource the profile / command line sets."""
    settings = workflow.resource_settings
    names = []
    if settings.default_resources is not None:
        for arg in settings.default_resources.args or []:
            name = arg.split("=", 1)[0].strip()
            names.append((f"default-resources: {name}", name))
    for rule_name, values in (settings.overwrite_resources or {}).items():
        names += [(f"set-resources: {rule_name}: {name}", name) for name in values]
    return names


def option_values(argv, option):
    """The values of `--option X` / `--option=X` in a command line."""
    values = []
    for i, arg in enumerate(argv):
        if arg == option and i + 1 < len(argv):
            values.append(argv[i + 1])
        elif arg.startswith(f"{option}="):
            values.append(arg.split("=", 1)[1])
    return values


def profile_files():
    """The profile files of this snakemake run, found from its command line as snakemake does:
    --profile (or $SNAKEMAKE_PROFILE), and the workflow profile (by default profiles/default)."""
    from snakemake.cli import get_profile_dir

    argv = sys.argv[1:]
    from_env = os.environ.get("SNAKEMAKE_PROFILE")
    names = option_values(argv, "--profile") or ([from_env] if from_env else [])
    names = [name for name in names if name != "none"]
    chosen = (option_values(argv, "--workflow-profile") or ["default"])[-1]
    if chosen != "none":
        candidates = [Path(chosen), Path("profiles") / chosen,
                      Path(workflow.basedir) / "profiles" / chosen]
        names += [str(c) for c in candidates if c.exists()][:1]
    files = []
    for name in names:
        found = get_profile_dir(name)
        if found is not None and found[1] not in files:
            files.append(found[1])
    return files


def check_profile_keys():
    """Top-level keys of the profiles that are no snakemake option: snakemake stops at most of
    them, but ignores a misspelt key whose value is a mapping (`default-resource:`)."""
    from snakemake.cli import get_argument_parser

    options = set(get_argument_parser()._option_string_actions)
    valid = sorted(o[2:] for o in options if o.startswith("--"))
    problems = []
    for path in profile_files():
        for key in yaml.safe_load(Path(path).read_text()) or {}:
            if f"--{key}" not in options and not str(key).startswith("__"):  # YTE's keys
                close = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"; did you mean {close[0]}?" if close else ""
                problems.append(f"{path}: `{key}` is no snakemake option{hint}")
    return problems


def check_slurm_profile(jobs, facts):
    """Every problem of the profile and config with this cluster, one line each."""
    problems = check_profile_keys()
    rules = {r.name for r in workflow.rules}
    for name in workflow.resource_settings.overwrite_resources or {}:
        if name not in rules:
            close = difflib.get_close_matches(name, sorted(rules), n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(f"`set-resources: {name}` names no rule of this workflow ({hint}the "
                            "cluster jobs are "
                            f"{', '.join(sorted({job.rule.name for job in jobs}))})")
    for where, name in user_resource_names():
        if name not in SLURM_RESOURCES:
            close = difflib.get_close_matches(name, SLURM_RESOURCES, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            problems.append(f"`{where}`: unknown resource {name!r} ({hint}valid: "
                            f"{', '.join(SLURM_RESOURCES)})")

    # --cores caps the threads of every job (silently) and their sum
    cores = getattr(workflow.global_resources.get("_cores"), "value", None)
    requested = max([config["resources"][kind]["cpus"] for kind in ("train", "evaluate")]
                    + [env["cpus"] for kind in ("train", "evaluate")
                       for env in config["resources"][kind].get("envs", {}).values()
                       if "cpus" in env]
                    + [population_resource(job, "cpus") for job in POPULATION_JOBS])
    cap = (f"`cores: {cores}` caps the cluster jobs at {cores} CPUs in all; with --profile "
           "profiles/slurm, profiles/default's `cores: all` applies too: use --workflow-profile "
           "profiles/slurm")
    if cores is not None and cores < requested:
        problems.append(f"{cap} (`resources` asks for {requested} CPUs per job)")
    elif cores is not None:
        logger.warning(f"warning: {cap}")

    status = workflow.executor_settings.status_command
    accounting = facts["config"].get("AccountingStorageType", "")
    has_accounting = accounting not in ("", "accounting_storage/none")
    age = seconds(facts["config"].get("MinJobAge"))
    if status == "sacct" and not has_accounting:
        problems.append(f"`slurm-status-command: sacct` waits forever on this cluster, which has "
                        f"no job accounting (AccountingStorageType={accounting or 'none'}): use "
                        "`slurm-status-command: squeue`")
    if status == "squeue" and age is not None and age < MIN_JOB_AGE_S:
        fix = ("use `slurm-status-command: sacct` (this cluster has accounting)" if has_accounting
               else "ask the cluster's admins for MinJobAge >= 300 in slurm.conf, or accounting")
        problems.append(f"`slurm-status-command: squeue` needs finished jobs to stay in squeue "
                        f"for {MIN_JOB_AGE_S} s, but MinJobAge is {age} s here: {fix}")

    device = str(config["device"])
    if device.startswith("cuda:") and device != "cuda:0":
        problems.append(f"`device: {device}` (workflow config): a cluster job sees only the GPU "
                        "it was given, as cuda:0; use `device: cuda`")

    partitions = facts["partitions"]
    for job in jobs:
        name, resources = job.rule.name, job.resources
        partition = resources.get("slurm_partition") or None
        if partition is not None and partition not in partitions:
            problems.append(f"`{profile_key(name, 'slurm_partition')}`: unknown partition "
                            f"{partition!r}; this cluster's partitions: "
                            f"{', '.join(partitions)}")
            continue
        if partition is None:
            partition = facts["default_partition"]
            if partition is None:
                problems.append(f"`{profile_key(name, 'slurm_partition')}` is not set and "
                                "this cluster has no default partition; set it to one of "
                                f"{', '.join(partitions)}")
                continue
        if resources.get("slurm_account") and not has_accounting:
            problems.append(f"`{profile_key(name, 'slurm_account')}`: this cluster has no "
                            "accounting, so accounts cannot be checked or used; remove it")
        gpus = resources.get("gpu", 0) or 0
        model = resources.get("gpu_model")
        if model and not gpus:
            problems.append(f"`{profile_key(name, 'gpu_model')}` is {model!r}, but {name} "
                            f"jobs ask for no GPU (`device: {device}`); set `device: cuda` or "
                            "remove it")
        if gpus and partition not in facts["gpus_in"]:
            with_gpus = ", ".join(p for p in partitions if p in facts["gpus_in"]) or "none"
            problems.append(f"{name} jobs ask for a GPU (`device: {device}`), but partition "
                            f"{partition!r} has none; set "
                            f"`{profile_key(name, 'slurm_partition')}` to a partition with "
                            f"GPUs: {with_gpus}")
        elif gpus and model and model not in facts["gpu_types"].get(partition, set()):
            known = ", ".join(sorted(facts["gpu_types"].get(partition, set()))) or "none (untyped)"
            problems.append(f"`{profile_key(name, 'gpu_model')}`: unknown GPU model "
                            f"{model!r} in partition {partition!r}; its GPU models: {known}")
    return list(dict.fromkeys(problems))  # the same problem for many jobs, once


def check_slurm_submission():
    """The checks, when the executor is SLURM (the Snakefile's onstart)."""
    remote = [job for job in workflow.dag.needrun_jobs() if not job.is_local]
    problems = check_slurm_profile(remote, cluster_facts()) if remote else []
    if problems:
        raise WorkflowError("profiles/slurm does not fit this cluster or config; nothing "
                            "was submitted:\n  " + "\n  ".join(problems))
