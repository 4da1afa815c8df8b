"""Trainer settings vs hyperparameters (trmrl/settings.py): one flat namespace of keys at the
CLI/YAML boundary, split into two objects inside; a resume may change the trainer settings
(recorded in config.yaml), never a hyperparameter."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from test_train import one_line_error, train_args
from toy_suite import ToySuite
from trmrl import config as cfg
from trmrl.agents import AGENT_NAMES, agent_class
from trmrl.agents.reference import OracleAgent, ReferenceConfig
from trmrl.cli import main
from trmrl.envs import ENV_NAMES
from trmrl.errors import ConfigError, RunError
from trmrl.settings import AcceleratedSettings, TrainerSettings
from trmrl.train import _check_existing_run, resolve

REPO = Path(__file__).resolve().parents[1]
# the committed run directories (config.yaml of each): written by earlier versions, all flat
REFERENCE_CONFIGS = sorted((REPO / "results" / "reference").glob("**/config.yaml"))


@pytest.mark.parametrize("name", AGENT_NAMES)
def test_a_flat_mapping_round_trips_through_the_two_objects(name):
    cls = agent_class(name)
    keys = cfg.run_keys(cls)
    settings_keys = {f.name for f in dataclasses.fields(cls.settings_class)}
    config_keys = {f.name for f in dataclasses.fields(cls.config_class)}
    assert not settings_keys & config_keys and set(keys) == settings_keys | config_keys
    assert {"steps", "num_workers", "pipeline_sampling", "checkpoint_every_s"} <= settings_keys
    assert {"eval_every", "eval_tasks", "trials_per_update", "horizon", "preset"} <= config_keys
    for env in ENV_NAMES:
        settings, config = cfg.build_run(cls, cfg.env_defaults(name, env)[0])
        flat = cfg.flatten(settings, config)
        assert list(flat) == list(keys)  # every key once: the trainer's first, as config.yaml
        assert cfg.build_run(cls, flat) == (settings, config)


def test_keys_go_to_the_object_that_has_them():
    settings, config = cfg.build_run(OracleAgent, {"steps": "2e7", "cuda_graphs": False,
                                                   "num_workers": 3, "gamma": 0.5, "eval_every": 40})
    assert settings == AcceleratedSettings(steps=20_000_000, cuda_graphs=False, num_workers=3)
    assert config == ReferenceConfig(gamma=0.5, eval_every=40)


def test_an_unknown_key_names_the_valid_keys_of_both_objects():
    with pytest.raises(ConfigError, match="unknown --set key 'stepz'; valid keys: ") as error:
        cfg.build_run(OracleAgent, {"gamma": 0.5, "stepz": 10}, source="--set")
    valid = str(error.value).split("valid keys: ")[1].split(", ")
    assert valid == sorted(cfg.run_keys(OracleAgent))
    assert {"steps", "cuda_graphs", "gamma", "eval_every"} <= set(valid)
    # a value error in either object names its key
    with pytest.raises(ConfigError, match="num_workers must be >= 0, got -1"):
        cfg.build_run(OracleAgent, {"num_workers": -1})
    with pytest.raises(ConfigError, match="'cuda_graphs' must be bool, got 'yes'"):
        cfg.build_run(OracleAgent, {"cuda_graphs": "yes"})


def test_an_agent_declaring_a_key_twice_is_a_definition_error():
    @dataclasses.dataclass
    class Clashing(ReferenceConfig):
        num_workers: int = 2

    class Bad(OracleAgent):
        config_class = Clashing

    with pytest.raises(ConfigError, match="num_workers are both trainer settings "
                                          r"\(AcceleratedSettings\) and hyperparameters \(Clashing\)"):
        cfg.run_keys(Bad)


def test_an_agent_gets_its_settings_at_construction():
    config = cfg.build(ReferenceConfig, {"hidden": [8]})
    default = OracleAgent(config, ToySuite(), torch.device("cpu"), 0)
    assert default.settings == AcceleratedSettings()  # none given: the class's defaults
    chosen = OracleAgent(config, ToySuite(), torch.device("cpu"), 0,
                         settings=AcceleratedSettings(cuda_graphs=False, num_workers=2))
    assert chosen.settings.num_workers == 2 and not chosen.graphed
    with pytest.raises(TypeError, match=r"agent 'oracle' needs trainer settings with cuda_graphs, "
                                        r"torch_compile \(AcceleratedSettings\), got TrainerSettings"):
        OracleAgent(config, ToySuite(), torch.device("cpu"), 0, settings=TrainerSettings())


def test_trmrl_and_pearl_keep_their_own_setting_defaults():
    assert agent_class("trmrl").settings_class().torch_compile  # TrMRL compiles, other PPO agents not
    assert not agent_class("rl2").settings_class().torch_compile
    pearl = agent_class("pearl").settings_class()
    assert pearl.steps == 1_000_000 and pearl.cuda_graphs and not hasattr(pearl, "torch_compile")
    # MAML has no GPU path: no switch that would do nothing
    assert "cuda_graphs" not in cfg.run_keys(agent_class("maml"))


def test_a_resume_may_change_trainer_settings_and_records_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80, agent="oracle")) == 0  # checkpoint_every_s=0 (TINY)
    assert yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"]["checkpoint_every_s"] == 0
    # a larger budget, another checkpoint interval, two sampler workers: how it runs
    assert main(train_args(run, steps=160, agent="oracle",
                           extra=["checkpoint_every_s=3600", "num_workers=2"])) == 0
    recorded = yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"]
    assert (recorded["steps"], recorded["checkpoint_every_s"], recorded["num_workers"]) == (160, 3600.0, 2)
    # what the run learns from, and what it is measured on, are refused, naming the key
    one_line_error(capsys, train_args(run, steps=240, agent="oracle", extra=["gamma=0.5"]),
                   "other hyperparameters (gamma: 0.9 -> 0.5)")
    one_line_error(capsys, train_args(run, steps=240, agent="oracle", extra=["eval_every=240"]),
                   "other hyperparameters (eval_every: 160 -> 240)")
    assert yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"] == recorded


@pytest.mark.parametrize("path", REFERENCE_CONFIGS,
                         ids=[str(p.parent.relative_to(REPO / "results" / "reference"))
                              for p in REFERENCE_CONFIGS])
def test_an_old_flat_config_yaml_loads_and_its_resume_check_is_unchanged(path, tmp_path):
    old = yaml.safe_load(path.read_text())
    hp = old["hyperparameters"]
    cls = agent_class(old["agent"])
    settings, config = cfg.build_run(cls, hp, source=str(path))
    flat = cfg.flatten(settings, config)
    assert {k: flat[k] for k in hp} == hp  # every key back where the file had it
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "config.yaml")
    # resumed with its own values (keys it predates at the defaults it ran with, as the
    # --set values of its own defaults version would give them)
    def spec(**changes):
        return resolve(old["agent"], old["env"], int(old["seed"]), device="cpu",
                       overrides={**flat, **changes})

    _check_existing_run(run, spec())
    _check_existing_run(run, spec(num_workers=flat["num_workers"] + 4, steps=flat["steps"] * 2,
                                  checkpoint_every_s=1.0))  # trainer settings may change
    with pytest.raises(RunError, match=r"other hyperparameters \(eval_tasks: "):
        _check_existing_run(run, spec(eval_tasks=flat["eval_tasks"] + 1))
