"""The cost plan (issue 20): rates table, the rate each agent x env uses, the hours and totals of
`trmrl plan`, its bad-input errors, the benchmark scripts that write rows, and the workflow's
dry-run print."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from trmrl import plan
from trmrl.cli import main
from trmrl.envs import ENV_NAMES

from test_workflow import copy_workflow, snakemake, write_config

REPO = Path(__file__).resolve().parents[1]
HEADER = ",".join(plan.RATE_COLUMNS)


def rates_table(path: Path, *rows: str) -> Path:
    """A rates CSV written by hand (not by plan.append_rate: the reader is under test)."""
    path.write_text("\n".join([HEADER, *rows]) + "\n")
    return path


def row(machine, agent, env, version, rate, measured="whole run", date="2026-01-01"):
    return f"{machine},{agent},{env},{version},cpu,{rate},{measured},trmrl train ...,{date},"


def planned(agent, env, seed, steps, version, variant="", overrides=()):
    return {"agent": agent, "env": env, "seed": seed, "variant": variant, "steps": steps,
            "defaults_version": version, "set": list(overrides)}


def run_plan(monkeypatch, capsys, runs, *args):
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(runs)))
    code = main(["plan", *args])
    out, err = capsys.readouterr()
    return code, out, err


def table_rows(output: str) -> dict[tuple[str, str], list[str]]:
    """(agent, env) -> [steps, runs, h/run, h total] of the printed plan."""
    rows = {}
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 6 and re.fullmatch(r"[\d,]+", parts[2]):
            rows[parts[0], parts[1]] = parts[2:6]
    return rows


# 7.2M steps at 1,000 steps/s = 2 h; at 4,000 steps/s = 0.5 h (numbers whose hours are exact)
TINY_RATES = [
    row("cpu-2core", "rl2", "cheetah-vel", 1, 1000),
    row("cpu-2core", "rl2", "cheetah-vel", 1, 500, measured="first iterations", date="2026-02-01"),
    row("cpu-2core", "oracle", "cheetah-dir", 3, 4000),
    row("cpu-2core", "trmrl", "cheetah-vel", 3, 2000),
    row("h200-16core", "rl2", "ant-dir", 1, 1000),
]
TINY_RUNS = (
    [planned("rl2", "cheetah-vel", seed, 7_200_000, 1) for seed in (0, 1, 2)]
    + [planned("oracle", "cheetah-vel", seed, 7_200_000, 3) for seed in (0, 1)]
    + [planned("trmrl", "cheetah-vel", 0, 7_200_000, 4)]
    + [planned("rl2", "ant-dir", 0, 7_200_000, 1)]
    + [planned("rl2", "cheetah-vel", 0, 7_200_000, 1, variant="gru_size-64",
               overrides=["gru_size=64"])]
)


def test_hours_are_steps_over_rate_and_totals_add_the_known_runs(tmp_path, monkeypatch, capsys):
    rates = rates_table(tmp_path / "rates.csv", *TINY_RATES)
    code, out, err = run_plan(monkeypatch, capsys, TINY_RUNS, "--machine", "cpu-2core",
                              "--rates", str(rates))
    assert code == 0, err
    rows = table_rows(out)
    # rl2: the whole run's 1,000/s wins over the newer first-iterations 500/s: 7.2M / 1000 / 3600
    assert rows["rl2", "cheetah-vel"] == ["7,200,000", "3", "2.00", "6.00"]
    # the oracle borrows cheetah-dir's rate (same body), and the row says so
    assert rows["oracle", "cheetah-vel"] == ["7,200,000", "2", "0.50", "1.00"]
    oracle_line = next(line for line in out.splitlines() if line.startswith("oracle"))
    assert "of cheetah-dir (same body)" in oracle_line
    # an ablation variant uses its agent's rate, saying it was measured with the defaults
    assert rows["rl2--gru_size-64", "cheetah-vel"] == ["7,200,000", "1", "2.00", "2.00"]
    assert "--set gru_size=64" in out
    # 3 x 2 h + 2 x 0.5 h + 1 x 2 h; trmrl (a v3 rate for v4) and rl2 on ant-dir (another
    # machine's rate) stay out of the total
    assert "total on cpu-2core: 9.0 h for 6 of 8 runs (2 of them at another env's rate); " \
           "2 runs unknown" in out


def test_plan_rows_arithmetic_matches_a_hand_computation(tmp_path):
    rates = plan.read_rates(rates_table(tmp_path / "rates.csv", *TINY_RATES))
    runs = plan.parse_runs([planned("rl2", "cheetah-vel", s, 1_234_567, 1) for s in range(5)])
    (only,) = plan.plan_rows(runs, rates, "cpu-2core")
    # 1,234,567 steps at 1,000 steps/s are 1,234.567 s = 0.342935... h per run; the plan
    # multiplies and divides in another order, so allow float rounding only
    assert only.hours_per_run == pytest.approx(1234.567 / 3600, rel=1e-12)
    assert plan.totals([only]).hours == pytest.approx(5 * 1234.567 / 3600, rel=1e-12)


def test_unknown_rates_are_marked_and_an_older_version_is_no_rate(tmp_path, monkeypatch, capsys):
    rates = rates_table(tmp_path / "rates.csv", *TINY_RATES)
    code, out, _ = run_plan(monkeypatch, capsys, TINY_RUNS, "--machine", "cpu-2core",
                            "--rates", str(rates))
    assert code == 0
    rows = table_rows(out)
    # the v3 rate is shown in brackets, never as the v4 run's hours, and not in the total
    assert rows["trmrl", "cheetah-vel"] == ["7,200,000", "1", "(1.00)", "?"]
    trmrl_line = next(line for line in out.splitlines() if line.startswith("trmrl "))
    assert "unknown: no rate for defaults v4" in trmrl_line
    assert "not a v4 rate" in trmrl_line
    # no rate on this machine: unknown, with the machine that has one
    assert rows["rl2", "ant-dir"] == ["7,200,000", "1", "?", "?"]
    assert "measured on h200-16core" in out


def test_without_a_machine_each_kind_gets_its_total(tmp_path, monkeypatch, capsys):
    rates = rates_table(tmp_path / "rates.csv", *TINY_RATES)
    code, out, _ = run_plan(monkeypatch, capsys, TINY_RUNS, "--rates", str(rates))
    assert code == 0
    assert "total on cpu-2core: 9.0 h for 6 of 8 runs" in out
    assert "total on h200-16core: 2.0 h for 1 of 8 runs" in out


# ---------------------------------------------------------------------------------------
# bad input: one line on stderr, exit 2
# ---------------------------------------------------------------------------------------
def test_unknown_machine_kind_lists_the_kinds_of_the_table(tmp_path, monkeypatch, capsys):
    rates = rates_table(tmp_path / "rates.csv", *TINY_RATES)
    code, out, err = run_plan(monkeypatch, capsys, TINY_RUNS, "--machine", "h100-8core",
                              "--rates", str(rates))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert "unknown machine kind 'h100-8core'" in err
    assert "cpu-2core, h200-16core" in err


@pytest.mark.parametrize("bad_row, message", [
    (row("cpu-2core", "rl2", "cheetah-vel", 1, "fast"), "env_steps_per_s must be a positive number, got 'fast'"),
    (row("cpu-2core", "rl2", "cheetah-vel", 1, 0), "must be a positive number, got '0'"),
    (row("cpu-2core", "rl2", "cheetah-vel", "v1", 10), "defaults_version must be an integer, got 'v1'"),
    (row("cpu-2core", "rl2", "cheetah-velo", 1, 10), "unknown env 'cheetah-velo'; valid envs: cheetah-vel"),
    (row("CPU 2", "rl2", "cheetah-vel", 1, 10), "machine kind 'CPU 2'"),
    (row("cpu-2core", "rl2", "cheetah-vel", 1, 10, measured="a bit"), "valid: whole run, first iterations"),
    (row("cpu-2core", "rl2", "cheetah-vel", 1, 10, date="5 Dec"), "date '5 Dec' is not YYYY-MM-DD"),
    ("cpu-2core,rl2,cheetah-vel", "expected 10 columns"),
])
def test_a_malformed_rates_row_names_its_line(tmp_path, monkeypatch, capsys, bad_row, message):
    rates = rates_table(tmp_path / "rates.csv", TINY_RATES[0], bad_row)
    code, _, err = run_plan(monkeypatch, capsys, TINY_RUNS, "--machine", "cpu-2core",
                            "--rates", str(rates))
    assert code == 2 and err.count("\n") == 1
    assert "rates.csv, line 3: " in err and message in err


def test_bad_runs_and_missing_table_are_one_line_errors(tmp_path, monkeypatch, capsys):
    rates = rates_table(tmp_path / "rates.csv", *TINY_RATES)
    monkeypatch.setattr(sys, "stdin", io.StringIO("{not json"))
    assert main(["plan", "--rates", str(rates)]) == 2
    assert "stdin is not a JSON list of runs" in capsys.readouterr().err
    no_steps = [{**TINY_RUNS[0], "steps": None}]
    code, _, err = run_plan(monkeypatch, capsys, no_steps, "--rates", str(rates))
    assert code == 2 and "`steps` must be a JSON integer" in err
    code, _, err = run_plan(monkeypatch, capsys, TINY_RUNS, "--rates", str(tmp_path / "none.csv"))
    assert code == 2 and "cannot read the rates table" in err and "none.csv" in err


# ---------------------------------------------------------------------------------------
# the table and the scripts that write it
# ---------------------------------------------------------------------------------------
def test_every_env_has_a_body_and_the_committed_table_reads():
    assert set(plan.ENV_BODIES) == set(ENV_NAMES)
    rates = plan.read_rates(plan.DEFAULT_RATES)
    assert rates and all(rate.note for rate in rates)  # the conditions of every measurement
    # TrMRL's released algorithm (defaults v4) has no rate anywhere yet: no row may claim one
    # unless it was measured; today the table's TrMRL rows are v3 or first-iteration CPU rows
    for rate in rates:
        if rate.agent == "trmrl" and rate.defaults_version == 4:
            assert rate.measured == "first iterations" and "load average" in rate.note


def test_appended_rows_read_back(tmp_path):
    path = tmp_path / "rates.csv"
    rate = plan.Rate(machine="cpu-2core", agent="rl2", env="cheetah-vel", defaults_version=1,
                     device="cpu (2 CPU threads)", env_steps_per_s=1234.4, measured="first iterations",
                     command="python benchmarks/train_throughput.py --note 'a, b'", date="2026-12-05",
                     note="load average 1.00 before, 2.00 after; shared, with commas")
    plan.append_rate(path, rate)
    plan.append_rate(path, rate)
    assert path.read_text().count(HEADER) == 1
    read = plan.read_rates(path)
    assert read == [plan.Rate(**{**rate.__dict__, "env_steps_per_s": 1234.0})] * 2
    with pytest.raises(plan.UserError, match="machine kind 'CPU'"):
        plan.append_rate(path, plan.Rate(**{**rate.__dict__, "machine": "CPU"}))


def test_record_run_rate_writes_a_run_directorys_whole_run_rate(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        "agent: rl2\nenv: cheetah-dir\nseed: 3\ndevice: cuda\ndefaults_version: 1\n"
        "hyperparameters:\n  steps: 40000000\n")
    (run_dir / "metrics.csv").write_text(
        "env_steps,iteration,wall_s,loss\n8000,1,10.0,0.5\n16000,2,12.5,0.4\n")
    rates = tmp_path / "rates.csv"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "record_run_rate.py"), str(run_dir),
         "--machine", "h100-16core", "--rates", str(rates), "--date", "2026-12-01",
         "--note", "alone"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (rate,) = plan.read_rates(rates)
    # the last metrics row: 16,000 steps in 12.5 s of this run's segments
    assert rate.env_steps_per_s == 1280
    assert (rate.machine, rate.agent, rate.env, rate.defaults_version, rate.measured) == (
        "h100-16core", "rl2", "cheetah-dir", 1, "whole run")
    assert rate.command == "trmrl train --agent rl2 --env cheetah-dir --seed 3 --steps 40000000 --device cuda"
    assert rate.note.endswith("16,000 env steps in 12.5 s; alone")


# ---------------------------------------------------------------------------------------
# the workflow: a dry run prints the plan
# ---------------------------------------------------------------------------------------
def test_dry_run_prints_the_plan_and_rejects_an_unknown_machine(tmp_path):
    workdir = copy_workflow(tmp_path / "wf")
    rl2_version = 1  # rl2's defaults version (`trmrl agents`); a stale one would read "unknown"
    (workdir / "benchmarks").mkdir()
    rates_table(workdir / "benchmarks" / "rates.csv",
                row("cpu-2core", "rl2", "cheetah-vel", rl2_version, 1000))
    config = write_config(tmp_path / "plan.yaml", {
        "experiment": "plan", "agents": ["rl2", "oracle"], "envs": ["cheetah-vel"],
        "seeds": [0, 1], "steps": 7_200_000, "device": "cpu"})
    result = snakemake(workdir, "-n", "--configfile", str(config), "--config",
                       "plan_machine=cpu-2core")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table_rows(result.stdout)
    assert rows["rl2", "cheetah-vel"] == ["7,200,000", "2", "2.00", "4.00"]
    assert rows["oracle", "cheetah-vel"] == ["7,200,000", "2", "?", "?"]
    assert "total on cpu-2core: 4.0 h for 2 of 4 runs; 2 runs unknown" in result.stdout
    assert "Job stats:" in result.stdout  # the dry run itself goes on

    result = snakemake(workdir, "-n", "--configfile", str(config), "--config",
                       "plan_machine=h100")
    output = result.stdout + result.stderr  # a dry run logs to stdout
    assert result.returncode != 0
    (line,) = [line for line in output.splitlines() if "unknown machine kind" in line]
    assert line.startswith("invalid config at `plan_machine`: unknown machine kind 'h100'; "
                           "the rates table ")
    assert line.endswith("has: cpu-2core")
    assert "Job stats" not in output
