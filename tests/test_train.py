"""`trmrl train` / `trmrl evaluate` end to end on tiny budgets (CPU)."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from trmrl import config as cfg
from trmrl.agents import agent_class
from trmrl.cli import main
from trmrl.train import PROGRESS_COLUMNS

# a few-second cheetah-vel run: 2 trials x 2 episodes x 20 steps = 80 env steps per iteration
TINY = ["layers=1", "heads=2", "d_model=16", "d_ff=32", "trials_per_update=2", "horizon=20",
        "eval_every=160", "eval_tasks=2", "checkpoint_every_s=0", "minibatch_size=32", "epochs=2"]


def train_args(out, steps=480, seed=0, agent="trmrl", extra=()):
    """TINY's keys that ``agent`` has (TrMRL's model sizes only for trmrl), then ``extra``."""
    keys = cfg.run_keys(agent_class(agent))
    args = ["train", "--agent", agent, "--env", "cheetah-vel", "--seed", str(seed),
            "--out", str(out), "--steps", str(steps), "--device", "cpu"]
    tiny = [item for item in (TINY if agent == "trmrl" else TINY[4:]) if item.split("=")[0] in keys]
    for item in [*tiny, *extra]:
        args += ["--set", item]
    return args


def rows(path, drop_wall=True):
    with open(path) as handle:
        table = list(csv.reader(handle))
    return [[v for i, v in enumerate(r) if not (drop_wall and i == 1)] for r in table]


def test_train_writes_the_run_directory(tmp_path):
    run = tmp_path / "run"
    assert main(train_args(run)) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["agent"] == "trmrl" and config["env"] == "cheetah-vel" and config["seed"] == 0
    assert config["trmrl_version"] and config["git_commit"]
    assert config["hyperparameters"]["layers"] == 1 and config["hyperparameters"]["clip"] == 0.1
    table = rows(run / "progress.csv", drop_wall=False)
    assert table[0] == PROGRESS_COLUMNS
    body = table[1:]
    assert {r[2] for r in body} == {"train", "test"}
    test_steps = sorted({int(r[0]) for r in body if r[2] == "test"})
    assert test_steps == [0, 160, 320, 480]
    assert all(r[3] in ("0", "1") and r[5] == "" for r in body)  # 2 episodes, no success metric
    assert (run / "checkpoint.pt").exists() and not (run / "checkpoint.pt.tmp").exists()
    metrics = rows(run / "metrics.csv", drop_wall=False)
    assert metrics[0][:3] == ["env_steps", "iteration", "wall_s"] and "approx_kl" in metrics[0]
    assert [int(r[1]) for r in metrics[1:]] == [1, 2, 3, 4, 5, 6]


def test_finished_run_is_not_retrained_and_can_be_extended(tmp_path):
    run = tmp_path / "run"
    assert main(train_args(run, steps=160)) == 0
    before = (run / "progress.csv").read_text()
    assert main(train_args(run, steps=160)) == 0
    assert (run / "progress.csv").read_text() == before
    assert main(train_args(run, steps=640)) == 0
    extended = rows(run / "progress.csv")
    kept = len(before.splitlines())
    assert extended[:kept] == [[v for i, v in enumerate(r) if i != 1]
                               for r in csv.reader(before.splitlines())]
    assert max(int(r[0]) for r in extended[1:]) == 640
    # the extension keeps evaluating every eval_every (160) steps, not only at its new end
    assert sorted({int(r[0]) for r in extended[1:] if r[1] == "test"}) == [0, 160, 320, 480, 640]


def test_run_older_than_a_hyperparameter_resumes_at_its_default(tmp_path):
    """A run started before `target_kl` and `minibatch_steps` existed: it resumes (the new key
    at the default the run behaved as is no change), config.yaml gains the key, and
    metrics.csv keeps its header. (An older TrMRL run resumes only with the --set values of
    its own defaults version: the check compares against the current defaults, v4.)"""
    run = tmp_path / "run"
    assert main(train_args(run, steps=160, agent="oracle")) == 0
    config = yaml.safe_load((run / "config.yaml").read_text())
    del config["hyperparameters"]["target_kl"]
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    metrics = rows(run / "metrics.csv", drop_wall=False)
    old_header = [c for c in metrics[0] if c != "minibatch_steps"]
    (run / "metrics.csv").write_text("\n".join(",".join(r[:len(old_header)]) for r in
                                               [old_header, *metrics[1:]]) + "\n")
    assert main(train_args(run, steps=320, agent="oracle")) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["hyperparameters"]["target_kl"] == 0.0
    resumed = rows(run / "metrics.csv", drop_wall=False)
    assert resumed[0] == old_header and all(len(r) == len(old_header) for r in resumed)
    assert len(resumed) == 1 + 4
    assert main(train_args(run, steps=320, agent="oracle", extra=["target_kl=0.5"])) == 2  # a real change


def sigkill_after_progress(args, run_dir, lines):
    """Run `trmrl <args>` in a subprocess and SIGKILL it once its progress.csv has more
    than ``lines`` lines (a few iterations checkpointed, with checkpoint_every_s=0)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trmrl.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = run_dir / "progress.csv"
    deadline = time.time() + 120
    while time.time() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) > lines:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_and_resume_reproduce_an_uninterrupted_run(tmp_path):
    reference = tmp_path / "reference"
    assert main(train_args(reference, steps=960)) == 0

    killed = tmp_path / "killed"
    sigkill_after_progress(train_args(killed, steps=960), killed, lines=12)
    partial = rows(killed / "progress.csv")
    assert 12 < len(partial) < len(rows(reference / "progress.csv")), "kill came too late"

    assert main(train_args(killed, steps=960)) == 0
    assert rows(killed / "progress.csv") == rows(reference / "progress.csv")
    # metrics.csv: same iterations, same losses (wall_s is column 2 there)
    strip = lambda table: [r[:2] + r[3:] for r in table]  # noqa: E731
    assert strip(rows(killed / "metrics.csv", False)) == strip(rows(reference / "metrics.csv", False))


def test_evaluate_writes_the_protocol_table(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    out = tmp_path / "eval" / "adaptation.csv"
    assert main(["evaluate", "--run", str(run), "--protocol", "adaptation", "--out", str(out),
                 "--device", "cpu"]) == 0
    table = rows(out, drop_wall=False)
    assert table[0] == ["task", "task_param", "episode", "return", "success"]
    assert len(table) == 1 + 20 * 6
    assert {int(r[2]) for r in table[1:]} == set(range(6))
    assert {int(r[0]) for r in table[1:]} == set(range(20))
    assert main(["evaluate", "--run", str(run), "--protocol", "ood", "--out",
                 str(tmp_path / "ood.csv"), "--device", "cpu"]) == 0
    ood = rows(tmp_path / "ood.csv", drop_wall=False)[1:]
    assert all(3.0 <= float(r[1]) <= 4.0 for r in ood)


@pytest.mark.parametrize("agent", ["oracle", "memoryless"])
def test_reference_agents_train(tmp_path, agent):
    assert main(train_args(tmp_path / agent, steps=160, agent=agent)) == 0
    assert (tmp_path / agent / "checkpoint.pt").exists()


# -- bad input --------------------------------------------------------------------------------
def one_line_error(capsys, args, *words):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("trmrl: error:"), err
    for word in words:
        assert word in err, err
    return err


def test_cli_rejects_bad_input(tmp_path, capsys):
    out = str(tmp_path / "x")
    base = ["--env", "cheetah-vel", "--seed", "0", "--out", out]
    one_line_error(capsys, ["train", "--agent", "nope", *base], "'nope'", "trmrl", "memoryless")
    one_line_error(capsys, ["train", "--agent", "trmrl", *base, "--set", "layer=2"], "'layer'", "layers")
    one_line_error(capsys, ["train", "--agent", "trmrl", *base, "--set", "layers=two"], "'layers'", "int")
    one_line_error(capsys, ["train", "--agent", "trmrl", *base, "--set", "layers"], "key=value")
    one_line_error(capsys, ["train", "--agent", "trmrl", "--env", "cheetah", "--seed", "0",
                            "--out", out], "'cheetah'", "cheetah-vel")
    one_line_error(capsys, ["train", "--agent", "trmrl", *base, "--steps", "-5"], "steps")
    one_line_error(capsys, ["train", "--agent", "trmrl", *base, "--device", "tpu"], "tpu")
    one_line_error(capsys, ["tasks", "--env", "cheetah-dir", "--split", "ood", "--seed", "0"],
                   "'ood'", "train, test")
    one_line_error(capsys, ["tasks", "--env", "cheetah-vel", "--split", "val", "--seed", "0"],
                   "'val'", "train, test, ood")
    one_line_error(capsys, ["tasks", "--env", "cheetah-vel", "--split", "test", "--seed", "x"],
                   "seed", "'x'")
    one_line_error(capsys, ["rollout", "--env", "cheetah-vel", "--horizon", "0"], "horizon", "'0'")
    one_line_error(capsys, ["evaluate", "--run", out, "--protocol", "adaptation", "--out",
                            str(tmp_path / "e.csv")], "not a run directory")
    assert not Path(out).exists()


def test_run_dir_of_another_run_is_left_alone(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    snapshot = {p.name: p.read_bytes() for p in run.iterdir()}
    one_line_error(capsys, train_args(run, steps=80, seed=1), "seed=0", "seed=1")
    one_line_error(capsys, train_args(run, steps=80, extra=["clip=0.3"]), "clip")
    assert {p.name: p.read_bytes() for p in run.iterdir()} == snapshot


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    one_line_error(capsys, train_args(run, steps=160), "corrupt checkpoint")
    assert (run / "checkpoint.pt").read_bytes() == b"not a checkpoint"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    from trmrl.agents.ppo_agent import PPOAgent

    run = tmp_path / "run"
    assert main(train_args(run, steps=160)) == 0
    good = torch.load(run / "checkpoint.pt", weights_only=False)["env_steps"]

    def diverge(self, batch):
        raise FloatingPointError("non-finite PPO loss")

    monkeypatch.setattr(PPOAgent, "update", diverge)
    assert main(train_args(run, steps=400)) == 1
    err = capsys.readouterr().err
    assert "diverged" in err and "last good checkpoint" in err
    assert torch.load(run / "checkpoint.pt", weights_only=False)["env_steps"] == good


def test_evaluate_saves_episodic_memories(tmp_path):
    import numpy as np
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    latents = tmp_path / "latents.npz"
    assert main(["evaluate", "--run", str(run), "--protocol", "adaptation", "--out",
                 str(tmp_path / "a.csv"), "--device", "cpu", "--latents", str(latents)]) == 0
    data = np.load(latents)
    # 20 tasks x 6 episodes x (20 steps / stride 10) points of width d_model=16
    assert data["memory"].shape == (20 * 6 * 2, 16)
    assert set(data["step"]) == {0, 10} and set(data["episode"]) == set(range(6))
    assert len(data["task_param"]) == len(data["memory"])


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["agent_state"]["model"].pop("log_std")  # as if written by another version
    torch.save(state, run / "checkpoint.pt")
    one_line_error(capsys, ["evaluate", "--run", str(run), "--protocol", "adaptation", "--out",
                            str(tmp_path / "a.csv"), "--device", "cpu"], "does not fit")
    one_line_error(capsys, train_args(run, steps=160), "does not fit")


def test_evaluate_task_and_episode_counts(tmp_path):
    run = tmp_path / "run"
    assert main(train_args(run, steps=80)) == 0
    out = tmp_path / "a.csv"
    assert main(["evaluate", "--run", str(run), "--protocol", "adaptation", "--out", str(out),
                 "--device", "cpu", "--tasks", "3", "--episodes", "2"]) == 0
    assert len(rows(out)) == 1 + 3 * 2


def test_sigterm_checkpoints_the_iteration_and_exits_143(tmp_path):
    """SLURM sends SIGTERM before it kills a job that is cancelled, preempted or out of time:
    the run checkpoints at the end of its iteration and exits 143, so that nothing is lost."""
    reference = tmp_path / "reference"
    assert main(train_args(reference, steps=960)) == 0

    run = tmp_path / "terminated"
    # no periodic checkpoint: only SIGTERM writes one mid-run
    args = train_args(run, steps=960, extra=["checkpoint_every_s=3600"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trmrl.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        progress = run / "progress.csv"
        if progress.exists() and len(progress.read_text().splitlines()) > 12:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "terminated by SIGTERM at env step" in err and "checkpoint saved" in err, err
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert 0 < state["env_steps"] < 960, "SIGTERM came too late"
    # the checkpoint holds every row written: a resume drops nothing
    assert state["progress_bytes"] == (run / "progress.csv").stat().st_size
    assert max(int(r[0]) for r in rows(run / "progress.csv")[1:]) == state["env_steps"]

    assert main(args) == 0
    assert rows(run / "progress.csv") == rows(reference / "progress.csv")


def _children(pid):
    """Process ids whose parent is ``pid`` (a /proc scan)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and \
                    int(Path(f"/proc/{entry}/stat").read_text().rsplit(") ", 1)[1].split()[1]) == pid:
                found.append(int(entry))
        except (OSError, IndexError, ValueError):  # it exited while we looked
            pass
    return found


def _alive(pid):
    try:  # a zombie has exited: it only waits for its (new) parent to reap it
        return not Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].startswith("Z")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_sigterm_to_the_process_group_spares_the_sampler_workers(tmp_path):
    """timeout and scancel send SIGTERM to every process of the job: the sampler's workers
    ignore it and keep stepping, so that the trainer still checkpoints its iteration."""
    run = tmp_path / "run"
    # a budget it cannot finish before the signal; no periodic checkpoint: only SIGTERM writes one
    args = train_args(run, steps=10_000_000, extra=["checkpoint_every_s=3600", "num_workers=2"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trmrl.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        deadline = time.time() + 120
        progress, children = run / "progress.csv", []
        while time.time() < deadline:  # the first evaluation and 2 iterations are written
            if progress.exists() and len(progress.read_text().splitlines()) > 6:
                children = _children(process.pid)  # the workers and multiprocessing's tracker
                break
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        workers = [pid for pid in children
                   if b"--multiprocessing-fork" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert len(workers) == 2, "no progress, or no sampler workers, before the deadline"
        os.killpg(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "terminated by SIGTERM at env step" in err and "checkpoint saved" in err, err
    assert "SamplerError" not in err, err
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["env_steps"] > 0 and state["progress_bytes"] == progress.stat().st_size
    deadline = time.time() + 30  # the tracker exits once every process that used it is gone
    while any(_alive(pid) for pid in children) and time.time() < deadline:
        time.sleep(0.05)
    assert not [pid for pid in children if _alive(pid)], "a worker outlived the trainer"
    before = rows(progress)

    # the same command resumes from the checkpoint (to a small budget: steps may change)
    done_at = state["env_steps"] + 160
    resume = train_args(run, steps=done_at, extra=["checkpoint_every_s=3600", "num_workers=2"])
    result = subprocess.run([sys.executable, "-m", "trmrl.cli", *resume], env=env, timeout=120,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    assert f"resuming {run} at env step {state['env_steps']} of {done_at}" in result.stderr
    table = rows(progress)
    assert table[:len(before)] == before and len(table) > len(before)
    assert max(int(r[0]) for r in table[1:]) == done_at


@pytest.mark.parametrize("device, workers, threads", [
    ("cuda", 6, 2),   # the sampler workers get the CPUs; the trainer keeps the rest
    ("cuda", 10, 1),  # at least one
    ("cuda", 0, 8),   # no workers: the trainer steps the envs itself
    ("cpu", 6, 8),    # a CPU update needs every core (the workers wait meanwhile)
])
def test_trainer_threads_leave_the_workers_their_cpus(monkeypatch, device, workers, threads):
    from trmrl.utils import trainer_threads
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert trainer_threads(device, workers) == threads
