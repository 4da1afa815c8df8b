"""`trmrl train --seed 0 1 ...`: several seeds of one agent x env in one process (a population,
issue 20), each in an ordinary run directory, against the same seeds trained alone (CPU, tiny)."""

import dataclasses
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from test_train import one_line_error, rows, sigkill_after_progress, train_args
from trmrl.cli import main


def population_args(out_pattern, seeds=(0, 1), steps=480, agent="trmrl", extra=()):
    """train_args with several seeds and an --out holding {seed}."""
    args = train_args(out_pattern, steps=steps, agent=agent, extra=extra)
    at = args.index("--seed")
    return args[:at + 1] + [str(seed) for seed in seeds] + args[at + 2:]


def returns(table):
    return np.array([float(r[3]) for r in table[1:]])


@pytest.fixture(scope="module")
def alone_and_together(tmp_path_factory):
    """Seeds 0 and 1 trained alone, and together in one population (480 steps: 6 iterations)."""
    root = tmp_path_factory.mktemp("population")
    for seed in (0, 1):
        assert main(train_args(root / f"alone{seed}", seed=seed)) == 0
    assert main(population_args(root / "together{seed}")) == 0
    return root


def test_a_population_writes_each_seeds_run_directory_as_training_it_alone(alone_and_together):
    root = alone_and_together
    for seed in (0, 1):
        alone, together = root / f"alone{seed}", root / f"together{seed}"
        assert sorted(p.name for p in together.iterdir()) == sorted(p.name for p in alone.iterdir())
        assert (together / "config.yaml").read_text() == (alone / "config.yaml").read_text()
        solo, batched = rows(alone / "progress.csv"), rows(together / "progress.csv")
        # the same rows: env steps, split and episode index
        assert [r[:3] for r in batched] == [r[:3] for r in solo]
        # exactly equal before any batched update: the first evaluation (each member acts on
        # its own) and the first iteration's trials (acted by the vmapped population on the
        # same initial parameters, same action noise and resets: this holds on CPU)
        assert batched[1:5] == solo[1:5]
        # later rows drift: batched kernels sum in another order (float32 rounding, ~1e-7
        # relative per operation) and every update and physics step amplifies it: measured
        # up to 1.2% after 6 iterations of this config; 5% leaves room for other CPUs' kernels
        # (a member given another member's tasks or parameters fails the exact rows above)
        np.testing.assert_allclose(returns(batched), returns(solo), rtol=0.05)
        # the first update learns from identical trials: its losses agree to float32 rounding
        # of the minibatch sums (12 minibatch steps)
        first_solo = rows(alone / "metrics.csv")[1]
        first_batched = rows(together / "metrics.csv")[1]
        np.testing.assert_allclose(np.array(first_batched[2:], float),
                                   np.array(first_solo[2:], float), rtol=1e-4)
        state = torch.load(together / "checkpoint.pt", weights_only=False)
        assert state["seed"] == seed and state["iteration"] == 6 and state["sampler_calls"] == 6


def test_a_population_member_resumes_alone_and_the_population_catches_it_up(
        alone_and_together, tmp_path, caplog):
    """Members at different iterations: the one behind trains alone up to the other, then
    both go on together."""
    together = tmp_path / "together{seed}"
    for seed in (0, 1):
        shutil.copytree(alone_and_together / f"together{seed}", tmp_path / f"together{seed}")
    ahead = tmp_path / "together1"
    assert main(train_args(ahead, steps=640, seed=1)) == 0  # seed 1 alone, 2 iterations on
    shutil.copytree(tmp_path / "together0", tmp_path / "reference0")
    assert main(train_args(tmp_path / "reference0", steps=640)) == 0  # what catching up is
    seed1_before = rows(ahead / "progress.csv")

    caplog.set_level(logging.INFO, logger="trmrl.train")
    assert main(population_args(together, steps=800)) == 0
    assert "catch up first" in caplog.text
    caught_up = rows(tmp_path / "together0" / "progress.csv")
    reference = rows(tmp_path / "reference0" / "progress.csv")
    assert caught_up[:len(reference)] == reference  # one code path (alone) run twice: exact
    assert rows(ahead / "progress.csv")[:len(seed1_before)] == seed1_before
    for seed in (0, 1):
        table = rows(tmp_path / f"together{seed}" / "progress.csv")
        tested = sorted({int(r[0]) for r in table[1:] if r[1] == "test"})
        assert tested == [0, 160, 320, 480, 640, 800]
        assert torch.load(tmp_path / f"together{seed}" / "checkpoint.pt",
                          weights_only=False)["iteration"] == 10


def test_sigkill_and_resume_of_a_population_reproduce_it_uninterrupted(alone_and_together,
                                                                         tmp_path):
    reference = alone_and_together / "together{seed}"
    killed = tmp_path / "killed{seed}"
    sigkill_after_progress(population_args(killed), tmp_path / "killed0", lines=10)
    partial = rows(tmp_path / "killed0" / "progress.csv")
    assert 10 < len(partial) < len(rows(alone_and_together / "together0" / "progress.csv")), \
        "kill came too late"
    assert main(population_args(killed)) == 0
    strip = lambda table: [r[:2] + r[3:] for r in table]  # metrics.csv without wall_s
    for seed in (0, 1):
        assert rows(tmp_path / f"killed{seed}" / "progress.csv") == \
            rows(str(reference).format(seed=seed) + "/progress.csv")
        assert strip(rows(tmp_path / f"killed{seed}" / "metrics.csv", False)) == \
            strip(rows(str(reference).format(seed=seed) + "/metrics.csv", False))


def test_sigterm_checkpoints_every_member_and_exits_143(tmp_path):
    run = tmp_path / "run{seed}"
    args = population_args(run, steps=10_000_000, extra=["checkpoint_every_s=3600"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "trmrl.cli", *args], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    progress = tmp_path / "run1" / "progress.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (progress.exists() and
                                          len(progress.read_text().splitlines()) > 6):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "terminated by SIGTERM at env step" in err and "checkpoint saved" in err, err
    states = [torch.load(tmp_path / f"run{seed}" / "checkpoint.pt", weights_only=False)
              for seed in (0, 1)]
    assert states[0]["env_steps"] == states[1]["env_steps"] > 0
    for seed, state in enumerate(states):  # every row written is in the checkpoint
        assert state["progress_bytes"] == (tmp_path / f"run{seed}" / "progress.csv").stat().st_size


def test_a_diverging_member_stops_alone_and_the_others_finish(tmp_path, capsys, monkeypatch):
    from trmrl.population import Population

    real = Population.train_iteration

    def seed_1_diverges_at_its_fourth_update(self, sampler, tasks):
        results = real(self, sampler, tasks)
        for k, member in enumerate(self.members):
            if member.seed == 1 and sampler.calls == 4:
                results[k] = FloatingPointError("non-finite PPO loss")
        return results

    monkeypatch.setattr(Population, "train_iteration", seed_1_diverges_at_its_fourth_update)
    run = tmp_path / "run{seed}"
    assert main(population_args(run)) == 1
    err = capsys.readouterr().err
    assert "seed 1" in err and "diverged at env step 240" in err and "last good checkpoint" in err
    assert "other 1 runs trained to the end" in err
    finished = rows(tmp_path / "run0" / "progress.csv")
    assert max(int(r[0]) for r in finished[1:]) == 480
    assert torch.load(tmp_path / "run1" / "checkpoint.pt", weights_only=False)["env_steps"] == 240


@pytest.mark.parametrize("change, words", [
    (list, ["{seed}", "several seeds"]),  # --out without {seed}
    (lambda a: a[:a.index("--seed") + 1] + ["0", "1", "0"] + a[a.index("--seed") + 3:],
     ["seed 0", "twice"]),
])
def test_several_seeds_need_their_own_directories(tmp_path, capsys, change, words):
    args = population_args(tmp_path / "run", steps=80)
    one_line_error(capsys, change(args), *words)
    assert not list(tmp_path.iterdir())


def test_an_agent_without_a_population_is_refused_naming_why(tmp_path, capsys):
    err = one_line_error(capsys, population_args(tmp_path / "run{seed}", steps=80, agent="rl2"),
                         "rl2", "GRU", "on its own")
    assert "--seed" in err
    assert not list(tmp_path.iterdir())


def test_a_held_member_directory_refuses_the_population_naming_it(tmp_path, capsys):
    from trmrl.rundir import RunLock

    held = tmp_path / "run1"
    held.mkdir()
    with RunLock(held):
        one_line_error(capsys, population_args(tmp_path / "run{seed}", steps=80), str(held),
                       "in use")
    assert not (tmp_path / "run0").exists()  # the member this call created is gone again


def test_populations_on_a_gpu_run_uncompiled():
    """torch_compile (TrMRL's default on a GPU) cannot serve a population, which calls its
    members' models through torch.func: several seeds run with it off, and their config.yaml
    says so; off the GPU, where the setting does nothing, the spec is left as it is."""
    from trmrl.train import resolve, uncompiled
    cpu = resolve("trmrl", "cheetah-vel", 0, device="cpu")
    assert cpu.settings.torch_compile and uncompiled(cpu) is cpu
    gpu = dataclasses.replace(cpu, device="cuda")  # as resolve makes it on a GPU machine
    off = uncompiled(gpu)
    assert not off.settings.torch_compile and off.settings.cuda_graphs
    assert off.hyperparameters == gpu.hyperparameters
    assert dataclasses.replace(off.settings, torch_compile=True) == gpu.settings
