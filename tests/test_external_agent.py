"""Agents from other packages (entry-point group ``trmrl.agents``): the example package
examples/my_agent installed beside this one appears in `trmrl agents`, trains, evaluates and
is planned by the workflow; a broken registration is a one-line error naming it.

The example is installed with pip into a temporary folder (--target, offline: no index and
no build isolation, so setuptools comes from this environment, as the dev extra installs
it) that the commands get on PYTHONPATH: entry points are read from the installed metadata
found on sys.path, so nothing is installed into the test's environment.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import trmrl.agents as registry
from trmrl import config as cfg
from trmrl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
BUILT_IN = ["trmrl", "rl2", "varibad", "maml", "pearl", "oracle", "memoryless"]


@pytest.fixture(scope="module")
def example_env(tmp_path_factory) -> dict[str, str]:
    """Environment variables under which the example package is installed."""
    tmp = tmp_path_factory.mktemp("example")
    # a copy: the build writes build/ and *.egg-info next to the sources
    source = shutil.copytree(REPO / "examples" / "my_agent", tmp / "my_agent")
    site = tmp / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
         "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    path = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


def trmrl(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`trmrl ARGS` in a subprocess (the console script's function, run by this Python)."""
    return subprocess.run([sys.executable, "-c", "import sys; from trmrl.cli import main; "
                           "sys.exit(main())", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, check=False)


def test_trmrl_agents_lists_the_installed_agent_with_its_own_defaults(example_env):
    result = trmrl(example_env, "agents", "--json")
    assert result.returncode == 0, result.stderr
    agents = {agent["name"]: agent for agent in json.loads(result.stdout)["agents"]}
    assert list(agents) == [*BUILT_IN, "my_agent"]  # built-in ones first, in legend order
    mine = agents["my_agent"]
    assert mine["defaults_version"] == 1
    assert mine["doc"] == "PPO MLP on the current working memory (s_t, a_{t-1}, r_{t-1}, d_t)."
    # examples/my_agent/my_agent/defaults.yaml: default, the cheetah-vel entry, a preset
    assert mine["defaults"]["cheetah-dir"]["init_std"] == 0.5
    assert mine["defaults"]["cheetah-vel"]["init_std"] == 0.2
    assert mine["defaults"]["cheetah-vel"]["lr_policy"] == 3e-4
    assert mine["presets"] == {"wide": {"hidden": [256, 256]}}
    assert {"hidden", "normalize_observations"} <= set(mine["keys"])  # its own, the PPO base's
    # and the trainer settings of the PPO base, in the same flat namespace
    assert {"steps", "num_workers", "cuda_graphs", "torch_compile"} <= set(mine["keys"])
    assert mine["defaults"]["cheetah-vel"]["cuda_graphs"] is True


def test_the_installed_agent_trains_and_evaluates(example_env, tmp_path):
    run = tmp_path / "run"
    settings = ["trials_per_update=2", "horizon=20", "eval_every=80", "eval_tasks=2",
                "minibatch_size=32", "epochs=2", "checkpoint_every_s=0", "preset=wide"]
    result = trmrl(example_env, "train", "--agent", "my_agent", "--env", "cheetah-vel",
                   "--seed", "0", "--out", str(run), "--steps", "160", "--device", "cpu",
                   *[arg for item in settings for arg in ("--set", item)])
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["agent"] == "my_agent" and config["defaults_version"] == 1
    hyperparameters = config["hyperparameters"]
    assert hyperparameters["init_std"] == 0.2 and hyperparameters["hidden"] == [256, 256]
    assert hyperparameters["preset"] == "wide"
    assert hyperparameters["steps"] == 160 and hyperparameters["checkpoint_every_s"] == 0  # trainer
    result = trmrl(example_env, "evaluate", "--run", str(run), "--protocol", "adaptation",
                   "--out", str(tmp_path / "eval.csv"), "--tasks", "2", "--episodes", "2",
                   "--device", "cpu")
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "eval.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * 2  # header, 2 tasks x 2 episodes


def test_the_workflow_plans_the_installed_agent(example_env, tmp_path):
    config = yaml.safe_load((REPO / "config" / "quick.yaml").read_text())
    config.update(experiment="plugin", agents=["my_agent", "oracle"], envs=["cheetah-vel"],
                  seeds=[0], ablations={"studies": {}})
    config["hyperparameters"] = {"my_agent": {"default": {"hidden": [32, 32]}}}
    path = tmp_path / "plugin.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"),
                             "--configfile", str(path)], cwd=tmp_path, env=example_env,
                            capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert re.search(r"trmrl train --agent my_agent --env cheetah-vel --seed 0 .*"
                     r"--set 'hidden=\[32, 32\]'", output)
    assert "runs/cheetah-vel/my_agent/seed0/eval/adaptation.csv" in output  # evaluated too

    config["agents"] = ["my_agnet"]  # a typo: named, with the installed agents
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    result = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-s", str(REPO / "Snakefile"),
                             "--configfile", str(path)], cwd=tmp_path, env=example_env,
                            capture_output=True, text=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "agent 'my_agnet' is unknown; available agents: trmrl, rl2" in output
    assert "memoryless, my_agent" in output


# ---------------------------------------------------------------------------------------
# the registry, on entry points given directly (no installation)
# ---------------------------------------------------------------------------------------
@pytest.fixture
def entry_points(monkeypatch):
    """Replace the installed entry points of the group with the ones a test sets."""
    points: list[importlib.metadata.EntryPoint] = []

    def fake(group):
        assert group == registry.ENTRY_POINT_GROUP
        return points

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    registry._entry_points.cache_clear()
    registry.agent_class.cache_clear()
    yield points
    registry._entry_points.cache_clear()
    registry.agent_class.cache_clear()


def point(name: str, value: str) -> importlib.metadata.EntryPoint:
    return importlib.metadata.EntryPoint(name, value, registry.ENTRY_POINT_GROUP)


def test_unknown_agent_names_the_installed_ones(entry_points):
    entry_points += [point("zeta", "trmrl.agents.reference:MemorylessAgent"),
                     point("oracle", "trmrl.agents.reference:OracleAgent"),
                     point("trmrl", "trmrl.agents.trmrl:TrMRLAgent")]
    assert registry.agent_names() == ("trmrl", "oracle", "zeta")  # built-in order, then by name
    with pytest.raises(ConfigError, match="unknown agent 'rl3'; valid agents: trmrl, oracle, zeta$"):
        registry.check_agent_name("rl3")


@pytest.mark.parametrize("points, message", [
    ([], "no agents in the entry-point group 'trmrl.agents'.*reinstall"),
    ([("My-Agent", "x:Y")], "agent name 'My-Agent' .* is not valid: lowercase letters"),
    ([("oracle", "trmrl.agents.reference:OracleAgent"),
      ("oracle", "trmrl.agents.reference:MemorylessAgent")], "two agents are named 'oracle'"),
])
def test_bad_registrations_are_one_line_errors(entry_points, points, message):
    entry_points += [point(*p) for p in points]
    with pytest.raises(ConfigError, match=message):
        registry.agent_names()


@pytest.mark.parametrize("value, message", [
    ("trmrl.agents.reference:ReferenceConfig", "is not a subclass of trmrl.agents.base.Agent"),
    ("trmrl.agents.reference:OracleAgent", "names a class whose name is 'oracle'; set name = 'x'"),
])
def test_an_entry_point_must_name_an_agent_of_its_name(entry_points, value, message):
    entry_points.append(point("x", value))
    with pytest.raises(ConfigError, match=message):
        registry.agent_class("x")


def test_defaults_come_from_the_file_the_agent_class_names(entry_points, monkeypatch):
    from trmrl.agents.reference import OracleAgent

    entry_points.append(point("oracle", "trmrl.agents.reference:OracleAgent"))
    assert cfg.load_defaults("oracle")["version"] >= 1
    monkeypatch.setattr(OracleAgent, "defaults", "trmrl.configs:missing.yaml")
    with pytest.raises(ConfigError, match="agent 'oracle': its defaults file "
                                          "'trmrl.configs:missing.yaml' cannot be read"):
        cfg.load_defaults("oracle")
    monkeypatch.setattr(OracleAgent, "defaults", "oracle.yaml")
    with pytest.raises(ConfigError, match="names no defaults file: set defaults = "):
        cfg.load_defaults("oracle")
