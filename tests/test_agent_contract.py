"""The agent interface contract, run against every registered agent (new ones join by
registering): what training, evaluation and the workflow rely on from any agent.

Agents are built tiny on the toy suite (tests/toy_suite.py) with overrides for the keys their
config has, so each test takes about a second per agent.
"""

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from toy_suite import ToyEnv, ToySuite
from trmrl import config as cfg
from trmrl.agents import AGENT_NAMES, Agent, agent_class
from trmrl.settings import AgentConfig, TrainerSettings
from trmrl.agents.ppo_agent import PPOAgent
from trmrl.cli import main
from trmrl.envs import ENV_NAMES
from trmrl.sampling import PolicyOutput, StepInput, TrialSampler
from trmrl.train import evaluate_on_test

# applied where an agent's config has the key; small models where an agent has one
SMALL = {"trials_per_update": 3, "epochs": 2, "minibatch_size": 2, "eval_tasks": 3,
         "layers": 1, "heads": 2, "d_model": 16, "d_ff": 32, "wm_size": 3, "gru_size": 8,
         "hidden": [8], "policy_hidden": [8], "encoder_gru": 8, "latent_dim": 2,
         "decoder_hidden": [8], "vae_subsample_elbos": 3, "vae_batch_trials": 2,
         "episodes_per_task": 2, "num_train_tasks": 4, "num_initial_steps": 1, "num_steps_prior": 1,
         "num_extra_rl_steps_posterior": 1, "num_train_steps_per_itr": 2, "meta_batch": 2,
         "batch_size": 8, "context_batch_size": 4, "encoder_hidden": [8]}


def small_config(name: str, **extra):
    config_class = agent_class(name).config_class
    keys = {f.name for f in dataclasses.fields(config_class)}
    return cfg.build(config_class, {k: v for k, v in {**SMALL, **extra}.items() if k in keys})


def make_agent(name: str, suite=None, seed: int = 0, **extra) -> Agent:
    suite = suite or ToySuite(fall_at=4)  # early ends: trials carry padding
    return agent_class(name)(small_config(name, **extra), suite, torch.device("cpu"), seed)


def step_input(suite, n: int, rng: np.random.Generator, episode_start: bool) -> StepInput:
    tasks = suite.tasks("test", 0, n)
    return StepInput(obs=rng.normal(size=(n, suite.observation_dim)).astype(np.float32),
                     prev_action=rng.uniform(-1, 1, (n, suite.action_dim)).astype(np.float32),
                     prev_reward=rng.normal(size=n).astype(np.float32),
                     episode_start=np.full(n, episode_start), active=np.ones(n, bool),
                     task_features=np.stack([suite.task_features(t) for t in tasks]).astype(np.float32))


agents = pytest.mark.parametrize("name", AGENT_NAMES)


@agents
def test_registration_and_versioned_defaults(name):
    cls = agent_class(name)
    assert cls.name == name and issubclass(cls, Agent) and issubclass(cls.config_class, AgentConfig)
    assert issubclass(cls.settings_class, TrainerSettings)
    data = cfg.load_defaults(name)
    assert isinstance(data["version"], int) and data["version"] >= 1
    for env in ENV_NAMES:  # every env's defaults build (known keys, right types, valid)
        cfg.build_run(cls, cfg.env_defaults(name, env)[0])
    assert set(data.get("envs") or {}) <= set(ENV_NAMES)


@agents
def test_reset_and_act_shapes(name):
    agent = make_agent(name)
    suite, rng = agent.suite, np.random.default_rng(0)
    for n in (1, 4):
        agent.reset(n)
        for t in range(3):
            out = agent.act(step_input(suite, n, rng, episode_start=t == 0))
            assert isinstance(out, PolicyOutput)
            assert out.action.shape == (n, suite.action_dim) and np.isfinite(out.action).all()
            for key, value in out.extras.items():  # per-step extras: one row per trial
                assert np.asarray(value).shape[0] == n, key


@agents
def test_deterministic_acting_is_deterministic_and_reset_forgets(name):
    agent = make_agent(name)
    tasks = agent.suite.tasks("test", 0, 3)
    with TrialSampler(agent.suite, num_envs=3, seed=1) as sampler:
        first = sampler.run(agent, tasks, deterministic=True, call=0)
        sampler.run(agent, agent.suite.tasks("test", 1, 3))  # stochastic trials in between
        again = sampler.run(agent, tasks, deterministic=True, call=0)
    np.testing.assert_array_equal(first.action, again.action)
    np.testing.assert_array_equal(first.reward, again.reward)


@agents
def test_state_dict_round_trip_gives_identical_actions(name):
    trained = make_agent(name, seed=0)
    with TrialSampler(trained.suite, num_envs=3, seed=2) as sampler:
        trained.train_iteration(sampler, trained.suite.tasks("train", 0, 3))
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)  # as a checkpoint does
    buffer.seek(0)
    restored = make_agent(name, seed=5)  # other weights and generator until loaded
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    tasks = trained.suite.tasks("test", 0, 3)
    for deterministic in (True, False):  # stochastic too: the generator is restored
        batches = []
        for agent in (trained, restored):
            with TrialSampler(agent.suite, num_envs=3, seed=3) as sampler:
                batches.append(sampler.run(agent, tasks, deterministic=deterministic, call=0))
        np.testing.assert_array_equal(batches[0].action, batches[1].action)


@agents
def test_train_iteration_returns_finite_metrics(name):
    agent = make_agent(name)
    tasks = agent.suite.tasks("train", 0, 3)
    with TrialSampler(agent.suite, num_envs=3, horizon=5, episodes_per_trial=3) as sampler:
        before = ToyEnv.steps_taken
        result = agent.train_iteration(sampler, tasks)
    agent.close()
    # the budget counts every env step the agent took, with the trainer's sampler or its own
    # (MAML, PEARL collect in other shapes): its returns are [trials, episodes] of any size
    assert result.env_steps == ToyEnv.steps_taken - before > 0
    assert result.episode_return.ndim == 2 and result.episode_return.shape == result.episode_success.shape
    if agent.collects_trainer_trials:  # one trial per task on the trainer's sampler
        assert result.env_steps == 3 * 3 * 4  # 3 trials x 3 episodes x 4 steps (fall_at=4)
        assert result.episode_return.shape == (3, 3)
    assert result.metrics and all(isinstance(v, (int, float)) and math.isfinite(v)
                                  for v in result.metrics.values())


@agents
def test_evaluation_on_test_tasks(name):
    agent = make_agent(name)
    with TrialSampler(agent.suite, num_envs=3, seed=4) as sampler:
        returns, success = evaluate_on_test(agent, sampler, seed=0)
    assert returns.shape == success.shape == (3, agent.suite.episodes_per_trial)
    assert np.isfinite(returns).all()


@agents
def test_train_and_evaluate_from_the_command_line(name, tmp_path):
    """`trmrl train` then `trmrl evaluate --latents` on a real env at a tiny budget."""
    run = tmp_path / "run"
    keys = cfg.run_keys(agent_class(name))
    tiny = {**SMALL, "trials_per_update": 2, "horizon": 20, "eval_every": 80, "eval_tasks": 2,
            "checkpoint_every_s": 0}
    args = ["train", "--agent", name, "--env", "cheetah-vel", "--seed", "0", "--out", str(run),
            "--steps", "80", "--device", "cpu"]
    for key, value in tiny.items():
        if key in keys:
            args += ["--set", f"{key}={value}"]
    assert main(args) == 0
    out, latents = tmp_path / "adaptation.csv", tmp_path / "latents.npz"
    assert main(["evaluate", "--run", str(run), "--protocol", "adaptation", "--out", str(out),
                 "--device", "cpu", "--tasks", "3", "--episodes", "2",
                 "--latents", str(latents)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "task,task_param,episode,return,success" and len(lines) == 1 + 3 * 2
    data = np.load(latents)
    assert data["memory"].ndim == 2 and len(data["task"]) == len(data["memory"])


@agents
def test_acting_views_keep_memories_apart(name):
    """An agent with ``acting_view`` (a pipelined sampler acts through two) gives each view a
    memory of its own: two views acting on two halves of the envs act as one agent on all."""
    agent = make_agent(name)
    if not hasattr(agent, "acting_view"):
        pytest.skip(f"{name} acts for all envs at once")
    suite, rng = agent.suite, np.random.default_rng(0)
    steps = [step_input(suite, 4, rng, episode_start=t == 0) for t in range(3)]
    agent.reset(4)
    whole = [agent.act(step, deterministic=True).action for step in steps]
    first, second = agent, agent.acting_view()
    assert agent.acting_view() is second  # kept: a view's CUDA graphs are captured once
    first.reset(2)
    second.reset(2)
    for step, expected in zip(steps, whole):
        halves = [view.act(StepInput(*(getattr(step, f.name)[rows] for f in dataclasses.fields(step))),
                           deterministic=True).action
                  for view, rows in ((first, slice(0, 2)), (second, slice(2, 4)))]
        np.testing.assert_allclose(np.concatenate(halves), expected, rtol=1e-5, atol=1e-6)


def test_training_on_a_pipelined_sampler_with_workers():
    agent = make_agent("trmrl")
    suite = agent.suite
    with TrialSampler(suite, num_envs=4, num_workers=2, pipeline=True) as sampler:
        assert sampler.pipeline
        result = agent.train_iteration(sampler, suite.tasks("train", 0, 4))
        batch = sampler.run(agent, suite.tasks("test", 0, 4), deterministic=True, call=5)
    assert result.env_steps > 0 and all(np.isfinite(v) for v in result.metrics.values())
    with TrialSampler(suite, num_envs=4) as local:
        expected = local.run(agent, suite.tasks("test", 0, 4), deterministic=True, call=5)
    np.testing.assert_allclose(batch.action, expected.action, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch.valid, expected.valid)


PPO_AGENTS = [name for name in AGENT_NAMES if issubclass(agent_class(name), PPOAgent)]


@pytest.mark.parametrize("name", PPO_AGENTS)
def test_observation_normalisation_moves_between_iterations_only(name):
    """normalize_observations, an option of the PPO agent base: the model scales with the
    agent's normaliser, whose statistics move after each update, so the second iteration
    acts and learns with the first's statistics (the PPO ratio starts at 1)."""
    agent = make_agent(name, normalize_observations=True)
    assert agent.model.normalizer is agent.obs_normalizer  # in the model's state: checkpointed
    log_ratios, valid_steps = [], 0
    with TrialSampler(agent.suite, num_envs=3) as sampler:
        for i in range(2):
            batch = sampler.run(agent, agent.suite.tasks("train", i, 3))
            valid_steps += int(batch.valid.sum())
            ratios = record_first_log_ratio(agent)
            agent.update(batch)
            log_ratios.append(ratios[0])
    # acting one step at a time vs learning on the whole batch: float32 rounding
    assert max(r.abs().max().item() for r in log_ratios) < 1e-5
    assert agent.obs_normalizer.count.item() == valid_steps
    # the model reads the statistics: without them it computes something else
    inputs = agent.batch_inputs(batch)
    if not agent.trial_minibatches:  # models of timestep samples read [samples, ...]
        inputs = {k: v[torch.from_numpy(batch.valid)] for k, v in inputs.items()}
    with torch.no_grad():
        scaled = agent.model(inputs).mean
        agent.obs_normalizer.mean.zero_()
        agent.obs_normalizer.var.fill_(1.0)
        assert not torch.allclose(scaled, agent.model(inputs).mean)


def record_first_log_ratio(agent) -> list[torch.Tensor]:
    """The log-ratio (valid samples) of the first policy-loss minibatch of the next update,
    through whichever of evaluate (joint update) / evaluate_policy (policy phase) it calls."""
    ratios = []

    def recorder(method):
        def recording(minibatch):
            out = method(minibatch)
            if not ratios:
                valid = minibatch["weight"] > 0 if "weight" in minibatch else slice(None)
                ratios.append((out[0] - minibatch["logp"]).detach()[valid])
            return out
        return recording

    agent.evaluate = recorder(agent.evaluate)
    agent.evaluate_policy = recorder(agent.evaluate_policy)
    return ratios
