"""What `trmrl envs`, `trmrl agents` and `trmrl tasks` print for a reader (issue 23), and that
their --json outputs (read by the workflow) keep their shape."""

from __future__ import annotations

import json

import pytest
import torch

from trmrl.cli import main
from trmrl.envs import ENV_NAMES, make_suite


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_envs_is_one_table_row_per_env(capsys):
    code, out, _ = run(capsys, "envs")
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split()[:5] == ["env", "obs", "act", "horizon", "episodes"]
    rows = [line for line in lines[2:2 + len(ENV_NAMES)]]
    assert [row.split()[0] for row in rows] == list(ENV_NAMES)
    assert "(K)" in out  # the trial length's symbol is explained
    assert out.count("metaworld") <= len(ENV_NAMES)  # no repeated notes in the listing
    assert len(lines) < 2 * len(ENV_NAMES)


def test_envs_name_prints_one_env_and_rejects_unknown_names(capsys):
    code, out, _ = run(capsys, "envs", "cheetah-vel")
    assert code == 0
    assert out.startswith("cheetah-vel: HalfCheetah runs forward at a target velocity")
    assert "ood" in out and "U[3, 4]" in out and "ml1-reach" not in out
    code, _, err = run(capsys, "envs", "cheetah-speed")
    assert code == 2
    assert err.strip().startswith("trmrl: error:") and "'cheetah-speed'" in err
    assert "cheetah-vel" in err and len(err.strip().splitlines()) == 1


def test_envs_json_keeps_its_shape(capsys):
    _, out, _ = run(capsys, "envs", "--json")
    infos = json.loads(out)
    assert [info["name"] for info in infos] == list(ENV_NAMES)
    assert infos[0] == make_suite("cheetah-vel").info()
    _, out, _ = run(capsys, "envs", "cheetah-vel", "--json")
    assert json.loads(out) == infos[0]


@pytest.mark.parametrize("cuda", [False, True])
def test_agents_for_one_env_are_grouped_with_none_spelled_out(capsys, monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    code, out, _ = run(capsys, "agents", "--env", "cheetah-vel")
    assert code == 0
    trmrl = out.split("\n\n")[0]
    headers = [line.strip() for line in trmrl.splitlines() if line.endswith(":")]
    assert headers[:4] == ["architecture:", "PPO and update:", "trials and evaluation:",
                           "trainer settings (a resume may change them):"]
    assert "horizon            200 (the suite's)" in trmrl
    assert "None" not in trmrl
    assert "stabilised: " in trmrl  # the presets of its YAML
    if cuda:
        assert "on a CUDA device:" in trmrl and "torch_compile" in trmrl
    else:
        assert "cuda_graphs  " not in trmrl and "torch_compile  " not in trmrl
        assert "CUDA-only switches, not shown" in trmrl
    assert "on cheetah-dir" not in out  # one env asked for: no other env's differences
    maml = next(block for block in out.split("\n\n") if block.startswith("maml"))
    assert "architecture and update:" in maml


def test_agents_json_keeps_its_shape(capsys):
    _, out, _ = run(capsys, "agents", "--json")
    data = json.loads(out)
    assert set(data) == {"agents", "not_implemented"}
    trmrl = next(agent for agent in data["agents"] if agent["name"] == "trmrl")
    assert set(trmrl) == {"name", "defaults_version", "doc", "keys", "defaults", "presets",
                          "population"}
    assert trmrl["population"] is None  # several seeds in one process
    rl2 = next(agent for agent in data["agents"] if agent["name"] == "rl2")
    assert "GRU" in rl2["population"]  # why it cannot
    assert "cuda_graphs" in trmrl["keys"] and trmrl["defaults"]["cheetah-vel"]["horizon"] is None


def test_tasks_prints_parameters_and_marks_the_evaluation_tasks(capsys):
    code, out, _ = run(capsys, "tasks", "--env", "ml1-reach", "--split", "test", "--seed", "0")
    assert code == 0
    rows = [line for line in out.splitlines() if not line.startswith("#")][2:]
    assert len(rows) == 50
    marked = [row for row in rows if row.startswith("*")]
    evaluated = make_suite("ml1-reach").eval_tasks("test", 0)
    assert [int(row.split()[1]) for row in marked] == [task.index for task in evaluated]
    goal = evaluated[0].params["goal"]
    assert f"goal=({goal[0]:.3f}, {goal[1]:.3f}" in marked[0]  # the real goal, not the index
    code, out, _ = run(capsys, "tasks", "--env", "cheetah-vel", "--split", "train", "--seed", "0",
                       "--n", "3")
    assert "*" not in out  # training tasks are never the evaluation's
    task = make_suite("cheetah-vel").tasks("train", 0, 3)[2]
    assert f"velocity={task.params['velocity']:.3f}" in out.splitlines()[-1]
