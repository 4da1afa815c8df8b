"""Run directories that cannot be corrupted (issue 19): the lock, verified resume, outputs never
on a run's own files, budgets, restartable first writes, safe checkpoint loading, and one-line
errors for bad input. Tiny cheetah-vel runs on CPU, as in test_train.py."""

import errno
import io
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from test_train import one_line_error, rows, train_args
from trmrl.cli import main
from trmrl.rundir import LEFTOVERS, load_checkpoint_file


def evaluate_args(run, out, *extra):
    return ["evaluate", "--run", str(run), "--protocol", "adaptation", "--out", str(out),
            "--device", "cpu", *extra]


def snapshot(run: Path) -> dict[str, bytes]:
    """The run's files, without the lock and our own temp files: a SIGKILL during a checkpoint
    write leaves checkpoint.pt.tmp, which any later train may clear (it is never read)."""
    return {p.name: p.read_bytes() for p in run.iterdir()
            if p.is_file() and p.name not in LEFTOVERS}


def start_train(args, run_dir: Path, lines: int = 3) -> subprocess.Popen:
    """`trmrl <args>` in a subprocess, returned once its progress.csv has more than ``lines``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trmrl.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = run_dir / "progress.csv"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) > lines:
            return process
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"training did not start: {process.communicate()[1]}")


# -- 1. the lock ----------------------------------------------------------------------------
def test_second_train_or_evaluate_on_a_running_directory_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    first = start_train(train_args(run, steps=10_000_000, extra=["checkpoint_every_s=3600"]), run)
    try:
        err = one_line_error(capsys, train_args(run, steps=10_000_000,
                                                extra=["checkpoint_every_s=3600"]),
                             "in use by", f"pid {first.pid}", socket.gethostname())
        assert str(run) in err
        one_line_error(capsys, evaluate_args(run, tmp_path / "a.csv"), f"pid {first.pid}")
        assert not (tmp_path / "a.csv").exists()
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed holder
        first.wait()
    progress = rows(run / "progress.csv")
    steps = [int(r[0]) for r in progress[1:]]
    assert steps == sorted(steps), "a second writer interleaved rows"
    # the killed holder left no stale lock (it wrote no checkpoint: the run starts anew)
    assert main(train_args(run, steps=160, extra=["checkpoint_every_s=3600"])) == 0


def test_evaluations_of_one_run_may_run_side_by_side(tmp_path):
    """evaluate holds the lock shared: the workflow runs a run's protocols in parallel."""
    from trmrl.rundir import RunLock

    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    with RunLock(run, shared=True):  # as a concurrent `trmrl evaluate --protocol ood` would
        assert main(evaluate_args(run, tmp_path / "a.csv", "--tasks", "2", "--episodes", "1")) == 0


# -- 2. resume verifies progress.csv ----------------------------------------------------------
@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A run killed mid-way (checkpoint every iteration), rows after its checkpoint included;
    killed once for the module, each test damages a copy of its own (killed_run)."""
    from test_train import sigkill_after_progress

    run = tmp_path_factory.mktemp("killed") / "run"
    sigkill_after_progress(train_args(run, steps=960), run, lines=12)
    return run


def killed_run(killed: Path, tmp_path: Path) -> Path:
    """A copy of the killed run: its files and no process of its own (the run directory holds
    no absolute path, so a copy resumes as the original would)."""
    return Path(shutil.copytree(killed, tmp_path / "killed"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_args(run, steps=960)) == 0
    return rows(run / "progress.csv")


@pytest.mark.parametrize("damage", ["lf_line_endings", "cut_mid_line", "nul_bytes"])
def test_resume_repairs_a_progress_file_that_does_not_match_its_checkpoint(tmp_path, reference,
                                                                         killed, damage):
    run = killed_run(killed, tmp_path)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    data = (run / "progress.csv").read_bytes()
    if damage == "lf_line_endings":  # dos2unix: the checkpoint's byte offset now lies past rows
        data = data.replace(b"\r\n", b"\n")
    elif damage == "cut_mid_line":  # a half row inside the checkpointed part, rows after it
        cut = data.rfind(b"\r\n", 0, state["progress_bytes"] - 2)
        data = data[:cut + 2] + b"160,0.3,tra\r\n" + data[cut + 2:]
    else:  # a crash of the file system's writeback: zeros in place of the last block
        data = data + b"\0" * 64
    (run / "progress.csv").write_bytes(data)
    assert main(train_args(run, steps=960)) == 0
    assert b"\0" not in (run / "progress.csv").read_bytes()
    assert rows(run / "progress.csv") == reference
    table = pd.read_csv(run / "progress.csv")
    assert table["env_steps"].dtype == np.int64 and table["return"].dtype == np.float64


def test_resume_refuses_a_progress_file_that_lost_the_checkpoints_rows(tmp_path, capsys,
                                                                     killed):
    run = killed_run(killed, tmp_path)
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    data = (run / "progress.csv").read_bytes()
    (run / "progress.csv").write_bytes(data[:data.find(b"\r\n") + 2])  # the header alone
    before = snapshot(run)
    one_line_error(capsys, train_args(run, steps=960), "does not hold the rows",
                   f"env step {state['env_steps']}", "delete checkpoint.pt")
    assert snapshot(run) == before
    (run / "progress.csv").unlink()
    one_line_error(capsys, train_args(run, steps=960), "progress.csv is missing")


# -- 3. outputs never on a run's own files ------------------------------------------------------
@pytest.mark.parametrize("flag, name", [("--out", "checkpoint.pt"), ("--out", "config.yaml"),
                                        ("--out", "progress.csv"), ("--latents", "metrics.csv"),
                                        ("--latents", "checkpoint.pt"), ("--out", ".")])
def test_evaluate_never_writes_over_the_runs_own_files(tmp_path, capsys, flag, name):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    before = snapshot(run)
    target = run / name
    args = evaluate_args(run, target if flag == "--out" else tmp_path / "a.csv")
    if flag == "--latents":
        args += ["--latents", str(target)]
    one_line_error(capsys, args, "run's own")
    assert snapshot(run) == before


@pytest.mark.parametrize("where", ["directory", "under_a_file", "latents_directory"])
def test_evaluate_checks_its_outputs_before_any_work(tmp_path, capsys, monkeypatch, where):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    out = {"directory": tmp_path / "dir", "under_a_file": tmp_path / "file" / "a.csv",
           "latents_directory": tmp_path / "a.csv"}[where]
    args = evaluate_args(run, out) + (["--latents", str(tmp_path / "dir")]
                                      if where == "latents_directory" else [])
    import trmrl.evaluate
    monkeypatch.setattr(trmrl.evaluate, "load_run", lambda *a: pytest.fail("work started"))
    one_line_error(capsys, args, "--latents" if where == "latents_directory" else "--out")
    assert not list(tmp_path.glob("**/*.tmp"))


# -- 4. a smaller budget ------------------------------------------------------------------------
def test_a_smaller_steps_than_trained_is_refused_and_config_kept(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=320)) == 0
    before = snapshot(run)
    one_line_error(capsys, train_args(run, steps=160), "--steps 160", "320 env steps")
    assert snapshot(run) == before
    assert main(train_args(run, steps=320)) == 0  # the same budget: done, nothing changes
    assert snapshot(run)["progress.csv"] == before["progress.csv"]


# -- 5. the first config.yaml write -------------------------------------------------------------
@pytest.mark.parametrize("leftover", ["config.yaml.tmp", "checkpoint.pt.tmp", ".lock"])
def test_leftovers_of_a_killed_first_write_leave_a_fresh_directory(tmp_path, leftover):
    run = tmp_path / "run"
    run.mkdir()
    (run / leftover).write_bytes(b"agent: trm")  # a write cut short
    assert main(train_args(run, steps=80)) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["agent"] == "trmrl"
    assert not list(run.glob("*.tmp"))


def test_a_foreign_file_still_makes_a_directory_not_a_run(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    one_line_error(capsys, train_args(run, steps=80), "not a trmrl run directory")
    assert [p.name for p in run.iterdir()] == ["notes.txt"]


# -- 6. checkpoints load without running code -----------------------------------------------------
class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted checkpoint.pt does: call a function on load
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_a_crafted_checkpoint_does_not_execute(tmp_path, capsys, command):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    marker = tmp_path / "pwned"
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["latest_test"] = _Exploit(marker)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    (run / "checkpoint.pt").write_bytes(buffer.getvalue())
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control")))  # the payload does work...
    assert (tmp_path / "control").exists()
    args = train_args(run, steps=160) if command == "train" else evaluate_args(run, tmp_path / "a.csv")
    one_line_error(capsys, args, "corrupt checkpoint")
    assert not marker.exists()  # ...but not when loaded as a checkpoint


def test_checkpoints_with_numpy_arrays_still_load(tmp_path):
    """Checkpoints written before weights_only loading hold numpy arrays (PEARL's replay
    bookkeeping) and numpy generator states: they still load, values intact."""
    state = {"length": np.arange(4), "rows": np.ones((2, 3), np.float32),
             "scalar": np.float64(2.5), "rng": np.random.default_rng(0).bit_generator.state}
    torch.save(state, tmp_path / "old.pt")
    loaded = load_checkpoint_file(tmp_path / "old.pt")
    np.testing.assert_array_equal(loaded["length"], state["length"])
    np.testing.assert_array_equal(loaded["rows"], state["rows"])
    assert loaded["scalar"] == 2.5 and loaded["rng"] == state["rng"]


def test_a_checkpoint_missing_keys_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["agent_state"]
    torch.save(state, run / "checkpoint.pt")
    one_line_error(capsys, evaluate_args(run, tmp_path / "a.csv"), "missing agent_state")


# -- 7-9. bad input: one line, exit 2, no run directory made --------------------------------------
BAD_TRAIN = [
    (["--set", "epochs=0"], "epochs"),
    (["--set", "heads=3"], "divisible by heads"),
    (["--set", "lr_policy=.nan"], "finite"),
    (["--set", "lr_policy=inf"], "finite"),
    (["--set", "init_std=inf"], "finite"),
    (["--set", "clip=.inf"], "finite"),
    (["--set", "checkpoint_every_s=nan"], "finite"),
    (["--set", "hidden=[-5]"], "layer sizes"),
    (["--set", "hidden=[0]"], "layer sizes"),
    (["--set", "hidden=[64"], "not a YAML value"),
    (["--set", "hidden=!!python/object/apply:os.system [true]"], "not a YAML value"),
    (["--set", "wm_size=1000000000"], "wm_size"),
    (["--set", "horizon=1000000000"], "horizon"),
    (["--set", "trials_per_update=1000000000"], "trials_per_update"),
    (["--set", "eval_tasks=1000"], "eval_tasks=1000"),
    (["--seed", "99999999999999999999999"], "seed"),
    (["--steps", "1e23"], "steps"),
    (["--steps", "100000000000000000000000"], "steps"),
]


@pytest.mark.parametrize("extra, word", BAD_TRAIN, ids=[" ".join(e) for e, _ in BAD_TRAIN])
def test_bad_train_input_is_one_line_and_leaves_nothing(tmp_path, capsys, extra, word):
    out = tmp_path / "run"
    args = ["train", "--agent", "trmrl", "--env", "cheetah-vel", "--seed", "0", "--out", str(out),
            "--steps", "80", "--device", "cpu", *extra]
    one_line_error(capsys, args, word)
    assert not out.exists()


def test_bad_out_paths_are_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, train_args(tmp_path / "file", steps=80), "is a file")
    one_line_error(capsys, train_args(tmp_path / "file" / "run", steps=80), "which is a file")
    if os.geteuid() != 0:  # root writes through permissions; a read-only mount needs root to make
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        one_line_error(capsys, train_args(ro / "run", steps=80), "not writable")


@pytest.mark.parametrize("content", ["", "- just\n- a list\n", "agent: [unclosed\n",
                                     "agent: trmrl\nenv: cheetah-vel\nseed: 0\nhyperparameters:\n"
                                     "  no_such_key: 1\n"])
def test_evaluate_on_a_broken_config_is_one_line(tmp_path, capsys, content):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    (run / "config.yaml").write_text(content)
    one_line_error(capsys, evaluate_args(run, tmp_path / "a.csv"), "config")
    one_line_error(capsys, train_args(run, steps=80), "config")  # train refuses it alike


def test_more_tasks_than_the_split_has_is_an_error_not_a_cap(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    one_line_error(capsys, evaluate_args(run, tmp_path / "a.csv", "--tasks", "5000"),
                   "--tasks 5000", "20 tasks")
    one_line_error(capsys, ["tasks", "--env", "cheetah-vel", "--split", "train", "--seed", "0",
                            "--n", "100000000"], "at most")


# -- 10. messages that say what happened ------------------------------------------------------
def test_nan_at_the_first_iteration_says_no_checkpoint_exists(tmp_path, capsys, monkeypatch):
    from trmrl.agents.ppo_agent import PPOAgent

    def diverge(self, batch):
        raise FloatingPointError("non-finite PPO loss")

    monkeypatch.setattr(PPOAgent, "update", diverge)
    assert main(train_args(tmp_path / "run", steps=160)) == 1
    err = capsys.readouterr().err.strip()
    assert "no checkpoint was written yet" in err and "last good" not in err, err


def test_a_hand_edited_model_size_is_not_blamed_on_another_version(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["hyperparameters"]["d_model"] = 32
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    one_line_error(capsys, evaluate_args(run, tmp_path / "a.csv"), "config.yaml was edited")


# -- disk full: exit 1, one line, no temp file ------------------------------------------------
def test_a_full_disk_fails_in_one_line_and_leaves_no_temp_file(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real_fsync = os.fsync

    def full(fd):
        real_fsync(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(train_args(run, steps=160)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err, err
    assert not list(tmp_path.glob("**/*.tmp"))


def test_validate_resolves_planned_runs(capsys, monkeypatch):
    """`trmrl validate`, the workflow's check before any job: a bad value names its run."""
    plan = [{"agent": "trmrl", "env": "cheetah-vel", "seed": s, "steps": 1000, "set": ["layers=2"]}
            for s in (0, 1)]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(plan)))
    assert main(["validate"]) == 0
    plan[1]["set"] = ["epochs=0"]
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(plan)))
    one_line_error(capsys, ["validate"], "seed 1", "epochs")
    for text in ("nope", "[5]", '[{"env": "x"}]'):
        monkeypatch.setattr(sys, "stdin", io.StringIO(text))
        one_line_error(capsys, ["validate"], "validate")
