"""The Snakemake workflow (issue 4): plans and job counts, config rejections, the statistics
and figure scripts on fixture runs, rerun semantics, resuming an interrupted run, and the
quick preset end to end at CI scale: a cut of its grid in the fast suite, the whole grid with
-m slow (FAST_OVERRIDES, FULL_OVERRIDES).

Snakemake runs in a subprocess, on a temporary copy of the workflow or with --directory in a
temporary folder, so the tests never touch the checkout's results/ or .snakemake/.
"""

from __future__ import annotations

import base64
import csv
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "workflow" / "scripts"
WORKFLOW_FILES = ["Snakefile", "workflow", "config", "profiles", "environment.yml"]

# The quick preset end to end, at two scales; a second config file merges into the first,
# nested keys included (`--config` cannot nest numbers).
# full (-m slow; 89 jobs): the whole grid of config/quick.yaml, every agent, env and seed and
# both ablation studies, at CI budgets: one iteration per run, one seed for the ablations.
FULL_OVERRIDES = {"experiment": "ci", "steps": 3200, "ablations": {"seeds": [0]},
                  "hyperparameters": {"all": {"default": {"eval_tasks": 4}}}}
# fast (the default suite): the same grid cut to 4 of the 7 agents, with episodes of 50 steps
# on cheetah-vel and 20 on ml1-reach (one iteration of 8 trials, two on ml1-reach): 59 jobs
# that run every rule, table and figure script, each job shorter. The agents kept: TrMRL (the
# agent of interest, and the ablated one), MAML (its own evaluation protocol, success rates
# that average several episodes) and the oracle and memoryless references that normalise the
# scores. RL2, PEARL and VariBAD train and evaluate (with --latents) through the CLI in
# test_agent_contract.py, and every run of the full preset is planned and resolved by
# test_quick_preset_plans_the_readmes_92_jobs.
FAST_OVERRIDES = {**FULL_OVERRIDES, "agents": ["trmrl", "maml", "oracle", "memoryless"],
                  "steps": {"cheetah-vel": 800, "ml1-reach": 960},
                  "hyperparameters": {"all": {"default": {"eval_tasks": 4},
                                              "cheetah-vel": {"horizon": 50},
                                              "ml1-reach": {"horizon": 20}}}}


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def snakemake(workdir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`snakemake ARGS` in ``workdir`` (a copy of the workflow, or any folder with -s)."""
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, check=False,
                          capture_output=True, text=True, timeout=timeout)


def dry_run(workdir: Path, *args: str) -> dict[str, int]:
    """Job counts of `snakemake -n`: {rule: count} (empty when nothing is to be done)."""
    result = snakemake(workdir, "-n", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return job_counts(result.stdout + result.stderr)


def job_counts(output: str) -> dict[str, int]:
    if "Nothing to be done" in output:
        return {}
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    counts.pop("total", None)
    return counts


def copy_workflow(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def paper_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


# ---------------------------------------------------------------------------------------
# plans: job counts of the shipped configs (dry runs, seconds each)
# ---------------------------------------------------------------------------------------
PAPER_COUNTS = {
    # 7 agents x 6 envs x 3 seeds, plus 12 ablation variants x 3 seeds (the 5 grid points
    # that equal the main run reuse it: T-Fixup without LayerNorm, 4 layers, wm 5, 16 heads,
    # no preset)
    "train": 126 + 36,
    "evaluate_adaptation": 126,
    "evaluate_ood": 2 * 7 * 3,  # cheetah-vel and ant-dir have an ood split
    "aggregate_training_curves": 1, "aggregate_adaptation": 1, "aggregate_ood": 1,
    "aggregate_ablations": 1, "aggregate_scores": 1,
    "figure_training_curves": 1, "figure_adaptation": 1, "figure_ood": 1,
    "figure_ablations": 1, "figure_latent_map": 1, "figure_aggregate": 1,
    "config_snapshot": 1, "report": 1, "all": 1,
}


@pytest.fixture(scope="module")
def paper_plan(tmp_path_factory):
    """`snakemake -n all` on the paper grid, once for the tests that read its plan."""
    workdir = tmp_path_factory.mktemp("paper-plan")
    result = snakemake(workdir, "-n", "all", "-s", str(REPO / "Snakefile"), "--configfile",
                       str(REPO / "config" / "config.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    return SimpleNamespace(dir=workdir, result=result)


def test_paper_grid_lists_exact_job_counts(paper_plan):
    counts = job_counts(paper_plan.result.stdout + paper_plan.result.stderr)
    assert counts == PAPER_COUNTS
    assert sum(counts.values()) == 344
    assert not (paper_plan.dir / "results").exists()


def test_quick_preset_plans_the_readmes_92_jobs(tmp_path):
    """The README's main job as typed there (config/quick.yaml, no overrides): its 92 jobs,
    with every run resolved by `trmrl validate` on the way. The quick fixture below runs a
    cut of it in the fast suite and its whole grid under -m slow."""
    counts = dry_run(tmp_path, "--cores", "2", "-s", str(REPO / "Snakefile"), "--configfile",
                     str(REPO / "config" / "quick.yaml"))
    # 7 agents x 2 envs x 2 seeds, plus 4 ablation variants x 2 seeds (the 2 grid points
    # that equal the main run reuse it: T-Fixup without LayerNorm, 1 layer)
    assert counts == {**{k: 1 for k in PAPER_COUNTS}, "train": 28 + 8,
                      "evaluate_adaptation": 28, "evaluate_ood": 14}  # ood: cheetah-vel only
    assert sum(counts.values()) == 92
    assert not (tmp_path / "results").exists()


def test_extended_grid_adds_six_envs(tmp_path):
    counts = dry_run(tmp_path, "all", "-s", str(REPO / "Snakefile"), "--configfile",
                     str(REPO / "config" / "extended.yaml"))
    assert counts["train"] == 7 * 12 * 3 + 33
    assert counts["evaluate_adaptation"] == 7 * 12 * 3
    # ood splits: cheetah-vel, ant-dir, ant-goal, walker-params, hopper-params
    assert counts["evaluate_ood"] == 7 * 5 * 3


def test_ablation_variants_have_their_own_run_directories(paper_plan):
    result = paper_plan.result
    dirs = set(re.findall(r"runs/cheetah-vel/(trmrl[^/]*)/seed0/train\.done", result.stdout))
    assert dirs == {
        "trmrl", "trmrl--tfixup-layernorm", "trmrl--no-tfixup-no-layernorm",
        "trmrl--no-tfixup-layernorm", "trmrl--layers-1", "trmrl--layers-2", "trmrl--layers-8",
        "trmrl--wm_size-1", "trmrl--wm_size-25", "trmrl--wm_size-50", "trmrl--heads-1",
        "trmrl--heads-4", "trmrl--preset-stabilised"}
    # the variant's hyperparameters reach `trmrl train` as --set
    assert re.search(r"--out results/paper/runs/cheetah-vel/trmrl--layers-2/seed0 .*"
                     r"--set layers=2", result.stdout)


def test_an_agent_is_one_line_of_config_with_its_own_budget(tmp_path):
    """Adding an agent's name adds its train and evaluate jobs for every env and seed; PEARL
    trains on its package budgets (agent_steps: null), MAML on the grid's `steps`."""
    config = paper_config()
    config["agents"].remove("maml")
    config["ablations"]["studies"] = {}
    path = write_config(tmp_path / "without.yaml", config)
    without = dry_run(tmp_path, "all", "-s", str(REPO / "Snakefile"), "--configfile", str(path))
    config["agents"].append("maml")
    path = write_config(tmp_path / "with.yaml", config)
    # one dry run for the job counts and the commands (-p) of the jobs
    result = snakemake(tmp_path, "-n", "-p", "all", "-s", str(REPO / "Snakefile"),
                       "--configfile", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    with_maml = job_counts(result.stdout + result.stderr)
    added = {k: with_maml[k] - without.get(k, 0) for k in with_maml if with_maml[k] != without.get(k)}
    assert added == {"train": 6 * 3, "evaluate_adaptation": 6 * 3, "evaluate_ood": 2 * 3}
    assert re.search(r"--agent maml --env cheetah-vel .*--steps 20000000", result.stdout)
    pearl = re.findall(r"--agent pearl --env cheetah-vel [^\n]*", result.stdout)
    assert pearl and all("--steps" not in line for line in pearl)


def test_seeds_per_job_trains_seeds_together_for_agents_with_populations(tmp_path):
    """seeds_per_job: 2 on seeds 0-2: trmrl's seeds 0 and 1 train in one job (a rule of their
    own, whose outputs are both seeds' train.done), seed 2 alone; rl2 has no population and
    keeps one job per seed, which the plan says."""
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(agents=["trmrl", "rl2"], envs=["cheetah-vel"], seeds=[0, 1, 2],
                  ablations={}, seeds_per_job=2)
    path = write_config(tmp_path / "population.yaml", config)
    args = ("-n", "-p", "runs", "-s", str(REPO / "Snakefile"), "--configfile", str(path))
    result = snakemake(tmp_path, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts == {"train": 1 + 3, "train_trmrl_cheetah_vel_seeds_0_1": 1,
                      "evaluate_adaptation": 6, "evaluate_ood": 6, "runs": 1}
    population = result.stdout.split("rule train_trmrl_cheetah_vel_seeds_0_1:")[1].split("\n\n")[0]
    run = "results/quick/runs/cheetah-vel/trmrl"
    assert f"output: {run}/seed0/train.done, {run}/seed1/train.done" in population
    assert re.search(rf"trmrl train --agent trmrl --env cheetah-vel --seed 0 1 "
                     rf"--out '{run}/seed{{seed}}' ", population)
    # the CPUs and memory of both seeds (quick.yaml: 1 CPU and 2000 MB a run)
    assert "threads: 2" in population and "mem_mb=4000" in population
    assert re.search(rf"--seed 2 --out {run}/seed2 ", result.stdout)
    assert "rl2: one seed per job (rl2 learns from whole-trial minibatches" in result.stdout
    assert "does not count it" in result.stdout  # the cost plan: runs alone
    # a seed that finished earlier (trained alone before seeds_per_job was set) leaves the
    # job planned for both: `trmrl train` keeps the finished run as it is, trains the other
    (tmp_path / run / "seed0").mkdir(parents=True)
    (tmp_path / run / "seed0" / "train.done").touch()
    again = snakemake(tmp_path, *args)
    assert job_counts(again.stdout)["train_trmrl_cheetah_vel_seeds_0_1"] == 1
    assert re.search(r"--seed 0 1 --out", again.stdout)


# ---------------------------------------------------------------------------------------
# bad config: rejected before any job, naming the key path and what is allowed
# ---------------------------------------------------------------------------------------
REJECTIONS = [
    ({"stpes": {"cheetah-vel": 100}}, ("invalid config: Additional properties are not allowed "
                                       "('stpes' was unexpected); valid keys: experiment, "
                                       "agents, envs, seeds, steps")),
    ({"resources": {"train": {"memory": 4}}}, "at `resources.train`: Additional properties"),
    ({"agents": ["trmrl", "transformer"]}, ("at `agents.1`: agent 'transformer' is unknown; "
                                            "available agents: trmrl, rl2, varibad, maml, "
                                            "pearl, oracle, memoryless")),
    ({"agents": ["trmrl", "Transformer"]}, "at `agents.1`: 'Transformer' does not match"),
    ({"hyperparameters": {"transformer": {"default": {"layers": 2}}}},
     "at `hyperparameters.transformer`: agent 'transformer' is unknown; available agents: trmrl"),
    ({"envs": ["cheetah-vel", "cheetah-speed"]}, ("at `envs.1`: 'cheetah-speed' is not one "
                                                  "of ['cheetah-vel', 'cheetah-dir'")),
    ({"steps": {"cheetah-vel": -5}}, "at `steps.cheetah-vel`: -5 is less than the minimum of 1"),
    ({"steps": {"cheetah-speed": 5}}, "at `steps`: 'cheetah-speed' is not one of"),
    ({"seeds": [0, "one"]}, "at `seeds.1`: 'one' is not of type 'integer'"),
    ({"allow_partial": "yes"}, "at `allow_partial`: 'yes' is not of type 'boolean'"),
    ({"train_revision": -1}, "at `train_revision`: -1 is less than the minimum of 0"),
    ({"device": "tpu"}, "at `device`: 'tpu' does not match"),
    ({"hyperparameters": {"trmrl": {"default": {"layer": 2}}}},
     "at `hyperparameters.trmrl.default.layer`: trmrl has no hyperparameter 'layer'; valid:"),
    ({"hyperparameters": {"all": {"cheetah-vel": {"lr_policy": "1e-4"}}}},
     "at `hyperparameters.all.cheetah-vel.lr_policy`: '1e-4' is not a valid lr_policy"),
    ({"hyperparameters": {"trmrl": {"default": {"steps": 5}}}}, "top-level `steps:`"),
    ({"ablations": {"studies": {"depth": {"layers": [1, "two"]}}}},
     "at `ablations.studies.depth.layers`: 'two' is not a valid layers"),
    # values of the right type but out of range: `trmrl validate` resolves every planned run
    ({"hyperparameters": {"trmrl": {"default": {"epochs": 0}}}},
     "invalid config: trmrl on cheetah-vel, seed 0: epochs out of range: 0"),
    ({"hyperparameters": {"trmrl": {"default": {"heads": 3}}}}, "must be divisible by heads (3)"),
    ({"hyperparameters": {"trmrl": {"default": {"lr_policy": float("nan")}}}},
     "'lr_policy' must be a finite number, got nan"),
    ({"hyperparameters": {"trmrl": {"default": {"hidden": [-5]}}}},
     "'hidden' holds layer sizes: each must be in 1..65536, got [-5]"),
    ({"seeds": [10**25]}, "at `seeds.0`: 10000000000000000000000000 is greater than the maximum"),
    ({"steps": 1000.5}, "at `steps`: 1000.5 is not of type 'integer'"),
]


@pytest.mark.parametrize("change, message", REJECTIONS,
                         ids=[f"{i}-{next(iter(change))}"
                              for i, (change, _) in enumerate(REJECTIONS)])
def test_bad_config_is_rejected_before_any_job(tmp_path, change, message):
    config = paper_config()
    for key, value in change.items():
        config[key] = value
    result = snakemake(tmp_path, "-n", "-s", str(REPO / "Snakefile"), "--configfile",
                       str(write_config(tmp_path / "bad.yaml", config)))
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output[-2000:]
    assert "Job stats" not in output
    assert not (tmp_path / "results").exists()


# ---------------------------------------------------------------------------------------
# statistics and figures on fixture runs (no training: the scripts' own functions)
# ---------------------------------------------------------------------------------------
ENV_INFO = {
    "cheetah-vel": {"name": "cheetah-vel", "success_metric": False,
                    "splits": ["train", "test", "ood"], "task_param": "target velocity (m/s)"},
    "ml1-reach": {"name": "ml1-reach", "success_metric": True, "splits": ["train", "test"],
                  "task_param": "index of the goal within its class"},
}
AGENT_LEVEL = {"trmrl": 0.8, "rl2": 0.5, "oracle": 1.0, "memoryless": 0.0}
STATISTICS = {"confidence_level": 0.95, "bootstrap_resamples": 500, "seed": 0}
FIGURE_SETTINGS = {"agent_of_interest": "trmrl", "probability_of_improvement": "baselines"}


@pytest.fixture
def scripts_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    for name in list(sys.modules):  # fresh imports for every test
        if name in {"analysis", "plotting", "report"} or name.startswith(("aggregate_", "figure_")):
            del sys.modules[name]


def fake_run(root: Path, agent: str, env: str, seed: int, steps: int = 1000,
             variant: str = "", finished: bool = True) -> dict:
    """A run directory as `trmrl train` + `trmrl evaluate` leave it, with made-up scores:
    each agent learns towards its level (oracle 1, memoryless 0), plus seed noise."""
    agent_dir = f"{agent}--{variant}" if variant else agent
    path = root / "runs" / env / agent_dir / f"seed{seed}"
    (path / "eval").mkdir(parents=True)
    rng = np.random.default_rng([seed, len(agent), len(variant)])
    level = AGENT_LEVEL[agent] + (0.2 if variant else 0.0)
    success = ENV_INFO[env]["success_metric"]
    (path / "config.yaml").write_text(yaml.safe_dump(
        {"agent": agent, "env": env, "seed": seed,
         "hyperparameters": {"steps": steps, "eval_every": 250}}))
    with open(path / "progress.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env_steps", "wall_s", "split", "episode", "return", "success"])
        # evaluations land just after the nominal points (iterations of 80 steps)
        for env_steps in ([0, 320, 560, 800, 1040] if finished else [0, 320]):
            for episode in range(2):
                score = level * min(env_steps, steps) / steps + 0.05 * rng.normal()
                writer.writerow([env_steps, 1.0, "test", episode, round(100 * score - 100, 3),
                                 int(rng.random() < np.clip(score, 0, 1)) if success else ""])
    for protocol in ["adaptation", "ood"] if "ood" in ENV_INFO[env]["splits"] else ["adaptation"]:
        rows = [["task", "task_param", "episode", "return", "success"]]
        for task in range(20):
            param = (3 if protocol == "ood" else 0) + task / 20
            for episode in range(6):
                score = level * (0.5 + episode / 10) + 0.05 * rng.normal()
                rows.append([task, param, episode, round(100 * score - 10 * param, 3),
                             int(rng.random() < np.clip(score, 0, 1)) if success else ""])
        with open(path / "eval" / f"{protocol}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(rows)
    memory = rng.normal(size=(60, 8)) if agent == "trmrl" else np.zeros((0, 0))
    # Meta-World's task parameter is the goal's index (an integer), locomotion's a float
    task_param = np.arange(20) if success else np.arange(20) / 20
    np.savez(path / "eval" / "latents.npz", memory=memory,
             task_param=np.repeat(task_param, 3)[: len(memory)])
    return {"agent": agent, "env": env, "seed": seed, "variant": variant, "path": str(path),
            "name": f"{env}/{agent_dir}/seed{seed}"}


def job(tmp_path, name, inputs=None, outputs=None, params=None):
    """A stand-in for the `snakemake` object that `script:` injects."""
    return SimpleNamespace(input=SimpleNamespace(**(inputs or {})),
                           output=SimpleNamespace(**(outputs or {})),
                           params=SimpleNamespace(**(params or {})),
                           log=[str(tmp_path / f"{name}.log")])


def analysis(allow_partial=False):
    return {"statistics": STATISTICS, "allow_partial": allow_partial, "envs": ENV_INFO,
            "agents": list(AGENT_LEVEL)}


@pytest.fixture
def fixture_tables(tmp_path, scripts_on_path):
    """Tables of the aggregate scripts over 4 agents x 2 envs x 3 seeds of fixture runs."""
    import aggregate_ablations
    import aggregate_evaluations
    import aggregate_scores
    import aggregate_training_curves

    runs = [fake_run(tmp_path, a, e, s) for a in AGENT_LEVEL for e in ENV_INFO for s in range(3)]
    tables = tmp_path / "tables"
    tables.mkdir()
    t = {name: str(tables / f"{name}.csv") for name in [
        "curves_by_seed", "curves", "adaptation_by_task", "adaptation", "ood_by_task", "ood",
        "ablations_by_seed", "ablations", "normalized", "aggregate", "improvement"]}
    aggregate_training_curves.main(job(tmp_path, "curves", outputs={
        "by_seed": t["curves_by_seed"], "summary": t["curves"]},
        params={"runs": runs, "missing": [], "analysis": analysis()}))
    for protocol in ["adaptation", "ood"]:
        mine = [r for r in runs if protocol == "adaptation" or r["env"] == "cheetah-vel"]
        aggregate_evaluations.main(job(tmp_path, protocol, outputs={
            "by_task": t[f"{protocol}_by_task"], "summary": t[protocol]},
            params={"protocol": protocol, "runs": mine, "missing": [], "analysis": analysis()}))
    main_trmrl = [r for r in runs if r["agent"] == "trmrl" and r["env"] == "cheetah-vel"]
    points = [{"study": "layers", "variant": "layers-1", "values": {"layers": 1},
               "default": True, "runs": main_trmrl},
              {"study": "layers", "variant": "layers-2", "values": {"layers": 2}, "default": False,
               "runs": [fake_run(tmp_path, "trmrl", "cheetah-vel", s, variant="layers-2")
                        for s in range(3)]}]
    aggregate_ablations.main(job(tmp_path, "ablations", outputs={
        "by_seed": t["ablations_by_seed"], "summary": t["ablations"]},
        params={"points": points, "missing": [], "analysis": analysis()}))
    aggregate_scores.main(job(tmp_path, "scores", inputs={"curves": t["curves_by_seed"]},
                              outputs={"normalized": t["normalized"], "aggregate": t["aggregate"],
                                       "improvement": t["improvement"]},
                              params={"analysis": analysis()}))
    return SimpleNamespace(tables={k: pd.read_csv(v) for k, v in t.items()}, paths=t, runs=runs)


def test_tables_follow_the_design_schemas(fixture_tables):
    tables = fixture_tables.tables
    summary = ["n", "mean", "ci_low", "ci_high", "iqm"]
    assert list(tables["curves_by_seed"].columns) == ["agent", "env", "seed", "env_steps",
                                                      "metric", "value"]
    assert list(tables["curves"].columns) == ["agent", "env", "env_steps", "metric", *summary]
    assert list(tables["adaptation_by_task"].columns)[:8] == [
        "agent", "env", "seed", "task", "task_param", "episode", "return", "success"]
    assert list(tables["adaptation"].columns) == ["agent", "env", "episode", "metric", *summary]
    curves = tables["curves"]
    # evaluations at 320, 560, ... are interpolated onto the nominal grid 0, 250, ..., 1000
    assert sorted(curves["env_steps"].unique()) == [0, 250, 500, 750, 1000]
    assert (curves["n"] == 3).all()
    assert (curves["ci_low"] <= curves["mean"] + 1e-9).all()
    assert (curves["mean"] <= curves["ci_high"] + 1e-9).all()
    assert set(curves.loc[curves["env"] == "ml1-reach", "metric"]) == {"success_rate"}
    reach = curves[curves["env"] == "ml1-reach"]
    assert reach["mean"].between(0, 1).all()
    assert set(tables["ood"]["env"]) == {"cheetah-vel"}
    assert set(tables["ablations"]["variant"]) == {"layers-1", "layers-2"}


def test_normalised_scores_iqm_and_probability_of_improvement(fixture_tables):
    tables = fixture_tables.tables
    normalized = tables["normalized"]
    by_agent = normalized.groupby(["env", "agent"])["normalized"].mean()
    for env in ENV_INFO:
        assert by_agent[(env, "oracle")] == pytest.approx(1.0)
        assert by_agent[(env, "memoryless")] == pytest.approx(0.0)
    aggregate = tables["aggregate"].set_index("agent")
    assert list(aggregate.columns) == ["n_envs", "n_runs", "iqm", "iqm_ci_low", "iqm_ci_high",
                                       "mean", "ci_low", "ci_high", "median", "median_ci_low",
                                       "median_ci_high", "optimality_gap", "optimality_gap_ci_low",
                                       "optimality_gap_ci_high"]
    assert (aggregate["n_runs"] == 6).all()
    for metric in ["iqm", "median", "optimality_gap"]:
        assert (aggregate[f"{metric}_ci_low"] <= aggregate[metric]).all()
        assert (aggregate[metric] <= aggregate[f"{metric}_ci_high"]).all()
    # the optimality gap against its definition, computed here from the normalised table;
    # summation orders differ, hence the float tolerance
    trmrl = normalized.loc[normalized["agent"] == "trmrl", "normalized"].to_numpy()
    assert aggregate.loc["trmrl", "optimality_gap"] == pytest.approx(
        np.mean([max(0.0, 1.0 - s) for s in trmrl]), abs=1e-12)
    assert aggregate.loc["trmrl", "median"] == pytest.approx(np.median(trmrl), abs=1e-12)
    # pairs of agents only: the references are the scale, not competitors
    improvement = tables["improvement"].set_index(["agent_x", "agent_y"])
    assert sorted(improvement.index) == [("rl2", "trmrl"), ("trmrl", "rl2")]
    # both directions come from separate bootstraps of the same point: they sum to 1 exactly
    # up to float rounding of the tie term
    assert (improvement.loc[("trmrl", "rl2"), "probability"]
            + improvement.loc[("rl2", "trmrl"), "probability"]) == pytest.approx(1.0, abs=1e-12)
    assert improvement.loc[("trmrl", "rl2"), "probability"] > 0.5  # level 0.8 against 0.5


def test_statistics_match_scipy_and_handle_few_seeds(scripts_on_path):
    import analysis as stats_module
    from scipy import stats

    rng = np.random.default_rng(0)
    scores = [rng.normal(size=5), rng.normal(size=5) + 1]
    point, low, high = stats_module.stratified(scores, stats_module.iqm, STATISTICS, rng)
    assert point == pytest.approx(stats.trim_mean(np.concatenate(scores), 0.25))
    assert low < point < high
    assert all(np.isnan(stats_module.bootstrap_ci((np.array([1.0]),), np.mean, STATISTICS, rng)))
    constant = stats_module.bootstrap_ci((np.array([2.0, 2.0]),), np.mean, STATISTICS, rng)
    assert constant == (2.0, 2.0)
    better = [np.array([2.0, 3.0]), np.array([5.0, 6.0])]
    worse = [np.array([0.0, 1.0]), np.array([1.0, 2.0])]
    assert stats_module.probability_of_improvement(better, worse, STATISTICS, rng)[0] == 1.0


def test_missing_runs_fail_naming_them_unless_partial(tmp_path, scripts_on_path):
    import aggregate_training_curves
    from analysis import IncompleteRuns

    runs = [fake_run(tmp_path, "trmrl", "cheetah-vel", 0),
            fake_run(tmp_path, "trmrl", "cheetah-vel", 1, finished=False)]
    outputs = {"by_seed": str(tmp_path / "s.csv"), "summary": str(tmp_path / "t.csv")}
    params = {"runs": runs, "missing": ["cheetah-vel/trmrl/seed2"], "analysis": analysis()}
    with pytest.raises(IncompleteRuns) as error:
        aggregate_training_curves.main(job(tmp_path, "c", outputs=outputs, params=params))
    assert "cheetah-vel/trmrl/seed2" in str(error.value)
    assert "cheetah-vel/trmrl/seed1: trained to 320 of 1,000 env steps" in str(error.value)
    params["analysis"] = analysis(allow_partial=True)
    aggregate_training_curves.main(job(tmp_path, "c", outputs=outputs, params=params))
    assert set(pd.read_csv(outputs["summary"])["n"]) == {1}


@pytest.mark.parametrize("partial", [False, True])
def test_every_figure_renders_pdf_and_png(tmp_path, fixture_tables, partial):
    import figure_ablations
    import figure_adaptation
    import figure_aggregate
    import figure_latent_map
    import figure_ood
    import figure_training_curves

    t = fixture_tables.paths
    missing = ["ml1-reach/oracle/seed3"] if partial else []
    figures = {
        figure_training_curves: {"summary": t["curves"]},
        figure_adaptation: {"summary": t["adaptation"]},
        figure_ood: {"adaptation": t["adaptation"], "ood": t["ood"],
                     "ood_by_task": t["ood_by_task"]},
        figure_ablations: {"summary": t["ablations"]},
        figure_latent_map: {},
        figure_aggregate: {"aggregate": t["aggregate"], "improvement": t["improvement"],
                           "curves": t["curves_by_seed"]},
    }
    for module, inputs in figures.items():
        name = module.__name__
        outputs = {"pdf": str(tmp_path / f"{name}.pdf"), "png": str(tmp_path / f"{name}.png")}
        params = {"missing": missing, "analysis": analysis(partial), "runs": fixture_tables.runs,
                  "figures": FIGURE_SETTINGS}
        module.main(job(tmp_path, name, inputs=inputs, outputs=outputs, params=params))
        for path in outputs.values():
            assert Path(path).stat().st_size > 5000, path


def test_figures_say_when_there_is_no_data(tmp_path, scripts_on_path):
    import figure_training_curves

    empty = tmp_path / "empty.csv"
    empty.write_text("agent,env,env_steps,metric,n,mean,ci_low,ci_high,iqm\n")
    outputs = {"pdf": str(tmp_path / "f.pdf"), "png": str(tmp_path / "f.png")}
    figure_training_curves.main(job(tmp_path, "f", inputs={"summary": str(empty)},
                                    outputs=outputs,
                                    params={"missing": ["x"], "analysis": analysis(True)}))
    assert Path(outputs["png"]).exists()


# ---------------------------------------------------------------------------------------
# the report page
# ---------------------------------------------------------------------------------------
FIGURE_NAMES = ["fig1_training_curves", "fig2_adaptation", "fig3_ood", "fig4_ablations",
                "fig5_latent_map", "fig6_aggregate"]


class PageStructure(HTMLParser):
    """What a page is made of: images (src, the id of the enclosing figure), links, table
    headers, and the text of every table cell."""

    def __init__(self, page: str):
        super().__init__()
        self.images, self.links, self.headers, self.cells, self.text = [], [], [], [], []
        self.scripts = 0
        self.figure, self.cell = None, None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figure = attrs.get("id")
        elif tag == "img":
            self.images.append((attrs["src"], self.figure))
        elif tag in ("a", "link"):
            self.links.append(attrs.get("href", ""))
        elif tag in ("th", "td"):
            self.cell = [tag, ""]
        elif tag == "script":
            self.scripts += 1
        elif tag == "br" and self.cell:
            self.cell[1] += " "

    def handle_endtag(self, tag):
        if tag == "figure":
            self.figure = None
        elif tag in ("th", "td") and self.cell:
            text = " ".join(self.cell[1].split())
            (self.headers if self.cell[0] == "th" else self.cells).append(text)
            self.cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self.cell:
            self.cell[1] += data


def report_config() -> dict:
    """The quick preset's config as the schema fills it, on the fixture's agents and envs."""
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(experiment="fixture", agents=list(AGENT_LEVEL), envs=list(ENV_INFO),
                  seeds=[0, 1, 2], statistics=STATISTICS, figures=FIGURE_SETTINGS,
                  allow_partial=False)
    return config


@pytest.mark.parametrize("partial", [False, True])
def test_report_shows_figures_tables_and_config(tmp_path, fixture_tables, partial):
    import report

    # stand-ins for the figures (their rendering is tested above): one size each, so that
    # every figure's own bytes can be found in the page
    figures = {}
    for index, name in enumerate(FIGURE_NAMES):
        figures[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (400 + 10 * index, 300), (40 * index, 90, 160)).save(figures[name])
    t = fixture_tables.paths
    tables = {"training_curves_by_seed": t["curves_by_seed"], "training_curves": t["curves"],
              "adaptation": t["adaptation"], "ood": t["ood"], "aggregate_scores": t["aggregate"],
              "probability_of_improvement": t["improvement"]}
    missing = ["ml1-reach/oracle/seed3"] if partial else []
    config = report_config()
    main_runs = [run for run in fixture_tables.runs if not run["variant"]]
    for run in main_runs:  # what `trmrl train` adds to a run's config.yaml
        path = Path(run["path"]) / "config.yaml"
        resolved = yaml.safe_load(path.read_text())
        resolved.update(device="cpu", trmrl_version="0.1.0", git_commit="0123456789abcdef")
        path.write_text(yaml.safe_dump(resolved))
    page = report.build_page(report.ReportInputs(
        config=config, figures=figures, tables=tables, captions=REPO / "workflow" / "report",
        envs=ENV_INFO, runs=main_runs, missing=missing))
    structure = PageStructure(page)

    # the six figures, embedded byte for byte, each in its own <figure> with its caption
    embedded = {figure: src for src, figure in structure.images if figure}
    assert list(embedded) == FIGURE_NAMES
    for name, src in embedded.items():
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]) == Path(figures[name]).read_bytes()
    for lead in ["Meta-training curves.", "Fast adaptation.", "Out-of-distribution tasks.",
                 "Ablations of TrMRL.", "Latent map of memories.", "Aggregate over envs"]:
        assert f"<strong>{lead}</strong>" in page
    # the strip at the top: a small copy of each figure, linking to it
    thumbnails = [src for src, figure in structure.images if not figure]
    assert len(thumbnails) == 6 and all(src.startswith("data:image/png") for src in thumbnails)
    assert {f"#{name}" for name in FIGURE_NAMES} <= set(structure.links)

    # key tables: aggregate scores with CIs, final scores per env, adaptation per episode
    for header in ["Median", "IQM", "Mean", "Optimality gap ↓", "Episode 1", "Episode 6"]:
        assert header in structure.headers
    assert any(h.startswith("cheetah-vel return per episode at 1,000 steps")
               for h in structure.headers)
    aggregate = fixture_tables.tables["aggregate"].set_index("agent")
    trmrl = aggregate.loc["trmrl"]
    assert (f"{trmrl['iqm']:.2f} [{trmrl['iqm_ci_low']:.2f}, {trmrl['iqm_ci_high']:.2f}]"
            in structure.cells)
    curves = fixture_tables.tables["curves"]
    final = curves[(curves["agent"] == "trmrl") & (curves["env"] == "ml1-reach")
                   & (curves["env_steps"] == 1000)].iloc[0]
    # success rates in percent, as the figures draw them
    assert f"{100 * final['mean']:.0f} [{100 * final['ci_low']:.0f}, " \
           f"{100 * final['ci_high']:.0f}]" in structure.cells

    # the config as a readable table: the budget comes from the runs' resolved configs
    for setting in ["Experiment", "Agents", "Envs", "Seeds", "Budget (env steps per run)",
                    "Device", "Ablations", "Hyperparameter overrides", "Statistics"]:
        assert setting in structure.headers
    assert "cheetah-vel: 1,000; ml1-reach: 1,000" in structure.cells
    assert "0, 1, 2 (3 per agent and env)" in structure.cells
    assert "trmrl 0.1.0; git commit 0123456789ab" in structure.cells
    # overrides of the quick preset, those for this experiment's agents only (no PEARL here)
    assert "gru_size = 32, minibatch_size = 8" in structure.cells
    assert "num_train_tasks" not in page
    assert "train: 1 CPU, 2,000 MB memory, 30 min; evaluate: 1 CPU, 2,000 MB memory, 10 min" \
        in structure.cells
    # no raw dicts, no unrendered templates or reStructuredText, in what the reader sees
    text = "".join(structure.text)
    for dump in ["{'", "': ", '{"', "{{", "**", "``", "None"]:
        assert dump not in text, dump
    # offline: nothing outside the page and the results folder, no JavaScript
    assert structure.scripts == 0 and "://" not in page and "url(" not in page
    outside = [link for link in structure.links
               if not link.startswith("#") and not link.startswith(("tables/", "figures/"))]
    assert sorted(outside) == ["config.yaml", "provenance.html", "provenance.html"]
    assert ("Partial results:" in page) == partial
    # bold marks the best agent, and nobody where all agents tie (e.g. all at 0% success)
    scores = pd.DataFrame({"agent": ["trmrl", "rl2", "oracle"], "mean": [0.0, 0.0, 1.0]})
    assert report.best_agents(scores, "mean") == set()
    assert report.best_agents(scores.assign(mean=[0.5, 0.0, 1.0]), "mean") == {"trmrl"}
    if partial:
        assert "ml1-reach/oracle/seed3" in page


# ---------------------------------------------------------------------------------------
# the quick preset end to end (CI scale), then rerun semantics on its results
# ---------------------------------------------------------------------------------------
QUICK_SCALES = {"fast": FAST_OVERRIDES, "full": FULL_OVERRIDES}


@pytest.fixture(scope="module", params=["fast", pytest.param("full", marks=pytest.mark.slow)])
def quick(request, tmp_path_factory):
    """A copy of the workflow that has run `snakemake all` on the quick preset at CI scale:
    the fast suite's cut of its grid, or (-m slow) all of it; the tests that take it run on
    both."""
    overrides = QUICK_SCALES[request.param]
    workdir = copy_workflow(tmp_path_factory.mktemp(f"quick-{request.param}"))
    config = yaml.safe_load((workdir / "config" / "quick.yaml").read_text())
    write_config(workdir / "ci.yaml", overrides)
    args = ("--cores", "2", "--configfile", "config/quick.yaml", "ci.yaml")
    started = time.perf_counter()
    result = snakemake(workdir, "all", *args, timeout=900)
    elapsed = time.perf_counter() - started
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    agents = overrides.get("agents", config["agents"])
    steps = overrides["steps"]
    return SimpleNamespace(dir=workdir, args=args, elapsed=elapsed, scale=request.param,
                           results=workdir / "results" / "ci", agents=agents, steps=steps,
                           # main runs (agents x 2 envs x 2 seeds) and 4 ablation variants
                           train_jobs=len(agents) * 2 * 2 + 4)


def test_quick_preset_builds_every_figure_table_and_the_report(quick):
    results = quick.results
    for name in ["fig1_training_curves", "fig2_adaptation", "fig3_ood", "fig4_ablations",
                 "fig5_latent_map", "fig6_aggregate"]:
        for ext in ["pdf", "png"]:
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 5000
    curves = pd.read_csv(results / "tables" / "training_curves.csv")
    assert set(curves["agent"]) == set(quick.agents)
    assert set(curves["env"]) == {"cheetah-vel", "ml1-reach"}
    assert set(curves["n"]) == {2}
    ablations = pd.read_csv(results / "tables" / "ablations.csv")
    assert set(ablations["variant"]) == {"tfixup-no-layernorm", "tfixup-layernorm",
                                         "no-tfixup-no-layernorm", "no-tfixup-layernorm",
                                         "layers-1", "layers-2"}
    report = (results / "report.html").read_text()
    structure = PageStructure(report)
    assert [figure for _, figure in structure.images if figure] == FIGURE_NAMES
    for header in ["Optimality gap ↓", "Episode 6", "Budget (env steps per run)"]:
        assert header in structure.headers
    steps = quick.steps if isinstance(quick.steps, dict) else dict.fromkeys(ENV_INFO, quick.steps)
    assert f"cheetah-vel: {steps['cheetah-vel']:,}; ml1-reach: {steps['ml1-reach']:,}" \
        in structure.cells
    assert "://" not in report and structure.scripts == 0
    provenance = (results / "provenance.html").read_text()  # Snakemake's own report
    assert "fig6_aggregate.png" in provenance and "training_curves.csv" in provenance
    snapshot = yaml.safe_load((results / "config.yaml").read_text())
    assert snapshot["experiment"] == "ci" and snapshot["steps"] == quick.steps
    assert snapshot["agents"] == quick.agents
    run = results / "runs" / "cheetah-vel" / "trmrl--layers-2" / "seed0"
    assert yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"]["layers"] == 2
    print(f"quick preset at CI scale ({quick.scale}): {quick.elapsed:.0f} s")


def test_complete_run_has_nothing_to_do_even_after_editing_agent_code(quick):
    agent_code = REPO / "trmrl" / "agents" / "trmrl.py"
    stat = agent_code.stat()
    try:
        os.utime(agent_code)  # "edit" the agent: the workflow does not depend on its code
        # nothing to do now means nothing to do before the edit too: an edit only adds jobs
        assert dry_run(quick.dir, "all", *quick.args) == {}
    finally:
        os.utime(agent_code, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("script, jobs", [
    ("figure_ood.py", {"figure_ood"}),
    ("plotting.py", {"figure_training_curves", "figure_adaptation", "figure_ood",
                     "figure_ablations", "figure_latent_map", "figure_aggregate"}),
])
def test_editing_a_figure_script_rerenders_only_its_figures(quick, script, jobs):
    path = quick.dir / "workflow" / "scripts" / script
    original, stat = path.read_text(), path.stat()
    try:
        path.write_text(original + "\n# an edit\n")
        assert dry_run(quick.dir, "all", *quick.args) == {**dict.fromkeys(jobs, 1),
                                                         "report": 1, "all": 1}
    finally:  # the script as it was, its time included: its outputs are newer again
        path.write_text(original)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert dry_run(quick.dir, "all", *quick.args) == {}


TRAINED_RUN = re.compile(r"trmrl train --agent \S+ --env \S+ --seed \d+ --out (\S+)")


def test_train_revision_retrains_in_new_run_directories(quick):
    result = snakemake(quick.dir, "-n", "all", *quick.args, "--config", "train_revision=1")
    assert job_counts(result.stdout)["train"] == quick.train_jobs  # every run: main + ablations
    trained = TRAINED_RUN.findall(result.stdout)
    assert len(trained) == quick.train_jobs and all(re.search(r"/seed\d-rev1$", out) for out in trained)
    # a mapping bumps only some agents (an agent's ablation variants with it)
    write_config(quick.dir / "rev.yaml", {"train_revision": {"oracle": 2}})
    result = snakemake(quick.dir, "-n", "all", "--configfile", "config/quick.yaml", "ci.yaml",
                       "rev.yaml")
    trained = TRAINED_RUN.findall(result.stdout)
    assert len(trained) == 4 and all("/oracle/seed" in out and out.endswith("-rev2")
                                     for out in trained)
    # nothing was deleted: the revision-0 runs are still complete
    assert dry_run(quick.dir, "all", *quick.args) == {}


def test_allow_partial_aggregates_the_finished_runs(quick):
    marker = quick.results / "runs" / "ml1-reach" / "oracle" / "seed1" / "train.done"
    stat = marker.stat()
    marker.unlink()  # as if this run had not finished
    try:
        partial = (*quick.args, "--config", "allow_partial=True")
        counts = dry_run(quick.dir, "figure_training_curves", *partial)
        assert counts == {"aggregate_training_curves": 1, "figure_training_curves": 1}
        result = snakemake(quick.dir, "figure_training_curves", *partial)
        assert result.returncode == 0, result.stderr[-3000:]
        curves = pd.read_csv(quick.results / "tables" / "training_curves.csv")
        oracle = curves[(curves["agent"] == "oracle") & (curves["env"] == "ml1-reach")]
        assert set(oracle["n"]) == {1} and set(curves["n"]) == {1, 2}
        log = (quick.results / "logs" / "aggregate" / "training_curves.log").read_text()
        assert "leaving out 1 run(s):\n  ml1-reach/oracle/seed1" in log
    finally:
        marker.touch()
        os.utime(marker, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    # back to every run: the tables that left it out are rebuilt (their run list changed)
    counts = dry_run(quick.dir, "all", *quick.args)
    assert "train" not in counts and counts["aggregate_training_curves"] == 1
    result = snakemake(quick.dir, "all", *quick.args)
    assert result.returncode == 0, result.stderr[-3000:]


def test_lint_is_clean(tmp_path):
    result = snakemake(copy_workflow(tmp_path), "--lint", "--configfile", "config/quick.yaml")
    assert result.returncode == 0 and "Congratulations" in result.stdout + result.stderr, \
        result.stdout[-3000:]


# ---------------------------------------------------------------------------------------
# an interrupted training job resumes from its checkpoint
# ---------------------------------------------------------------------------------------
def test_interrupted_training_resumes_from_its_checkpoint(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(experiment="resume", agents=["trmrl"], envs=["cheetah-vel"], seeds=[0],
                  steps=10_000_000, ablations={})  # cannot finish before the interruption
    config["hyperparameters"]["all"]["default"].update(checkpoint_every_s=0, eval_every=100_000)
    # short episodes: iterations of 8 trials x 2 episodes x 50 steps, evaluations to match
    config["hyperparameters"]["all"]["cheetah-vel"] = {"horizon": 50}
    write_config(workdir / "resume.yaml", config)
    run = workdir / "results" / "resume" / "runs" / "cheetah-vel" / "trmrl" / "seed0"
    command = [sys.executable, "-m", "snakemake", "runs", "--cores", "1",
               "--configfile", "resume.yaml"]
    output = tmp_path / "snakemake.out"
    with open(output, "wb") as sink:
        # Ctrl-C's default action: a shell's background job (`pytest &`, nohup) starts with
        # SIGINT ignored, which Python and every child would inherit and never see the signal
        process = subprocess.Popen(command, cwd=workdir, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # Ctrl-C once a few iterations are checkpointed
            progress = run / "progress.csv"
            if (run / "checkpoint.pt").exists() and progress.exists() and \
                    len(progress.read_text().splitlines()) >= 7:  # 2 iterations written
                break
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:  # say where it hung
            job_log = workdir / "results" / "resume" / "logs" / "train" / "cheetah-vel" / "trmrl" / "seed0.log"
            tails = [path.read_text()[-2000:] if path.exists() else f"({path.name} missing)"
                     for path in (output, job_log)]
            processes = subprocess.run(  # -g: the session, which start_new_session made
                ["ps", "-o", "pid,pgid,stat,etime,args", "-g", str(process.pid)],
                capture_output=True, text=True).stdout if shutil.which("ps") else "(no ps)"
            pytest.fail(f"snakemake did not exit within 120 s of Ctrl-C\n--- snakemake:\n{tails[0]}"
                        f"\n--- job log:\n{tails[1]}\n--- its process group:\n{processes}")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    before = (run / "progress.csv").read_text().splitlines()
    assert not (run / "train.done").exists(), "the run finished before the interruption"
    # the job's CPU (workflow/scripts/run_job.py) is free again
    slots = sorted((workdir / ".snakemake" / "slots").glob("cpu*.lock"))
    assert slots
    for path in slots:
        with open(path) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: still held
    assert (run / "checkpoint.pt").exists(), "snakemake must not delete the run directory"

    # the rerun resumes and stops at a small budget (steps may change): two iterations past
    # the last one written, wherever Ctrl-C caught it
    written = [int(line.split(",")[0]) for line in before[1:] if line.split(",")[0].isdigit()]
    budget = max(written) + 2 * 800
    config["steps"] = budget
    write_config(workdir / "resume.yaml", config)
    result = snakemake(workdir, "runs", "--cores", "1", "--configfile", "resume.yaml")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run / "train.done").exists() and (run / "eval" / "adaptation.csv").exists()
    log = (workdir / "results" / "resume" / "logs" / "train" / "cheetah-vel" / "trmrl" /
           "seed0.log").read_text()
    assert re.search(rf"resuming \S+ at env step [1-9]\d* of {budget}", log), log
    after = (run / "progress.csv").read_text().splitlines()
    kept = before[:-2]  # rows written after the last checkpoint are dropped and redone
    assert after[: len(kept)] == kept
    assert int(after[-1].split(",")[0]) >= budget
