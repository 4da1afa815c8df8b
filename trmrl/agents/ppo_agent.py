"""On-policy Gaussian agents trained with :mod:`trmrl.ppo` (TrMRL and the reference agents).

A subclass supplies a model (``forward(inputs) -> (action mean, value)``, a ``log_std``
parameter, and its policy/value parameter split) and two views of the same per-step inputs:
``step_inputs`` while acting (updating its memory) and ``batch_inputs`` for a whole batch of
trials when learning. The two must agree exactly; the tests check that the PPO ratio is 1
before the first gradient step.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from trmrl.agents.base import Agent, IterationResult
from trmrl.ppo import PPOConfig, gae, gaussian_entropy, gaussian_log_prob, make_optimizer, ppo_update
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch


def mlp(sizes: list[int], activation=nn.Tanh, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers with ``activation`` between them, Xavier-initialised, zero biases."""
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        linear = nn.Linear(fan_in, fan_out)
        last = i == len(sizes) - 2
        nn.init.xavier_uniform_(linear.weight, gain=out_gain if last else 1.0)
        nn.init.zeros_(linear.bias)
        layers += [linear] if last else [linear, activation()]
    return nn.Sequential(*layers)


class PPOAgent(Agent):
    config: PPOConfig

    def __init__(self, config: PPOConfig, suite, device, seed):
        super().__init__(config, suite, device, seed)
        torch.manual_seed(seed)  # parameter initialisation
        self.model = self.build_model().to(device)
        self.optimizer = make_optimizer(self.model.policy_parameters(),
                                        self.model.value_parameters(), config)
        # one CPU generator for action noise and minibatch order: identical runs on CPU
        self.generator = torch.Generator().manual_seed(seed)
        self.record_memory = False  # evaluation sets it to collect episodic memories

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @abc.abstractmethod
    def step_inputs(self, step: StepInput) -> torch.Tensor:
        """Model inputs for this step (on ``self.device``); updates the memory."""

    @abc.abstractmethod
    def batch_inputs(self, batch: TrialBatch) -> torch.Tensor:
        """Model inputs for every step of the batch, shaped [N, T, ...] (on ``self.device``)."""

    # -- acting ---------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        mean, value = self.model(self.step_inputs(step))
        log_std = self.model.log_std.expand_as(mean)
        if deterministic:
            action = mean
        else:
            noise = torch.randn(mean.shape, generator=self.generator).to(self.device)
            action = mean + log_std.exp() * noise
        logp = gaussian_log_prob(mean, log_std, action)
        extras = {"logp": logp.cpu().numpy(), "value": value.cpu().numpy()}
        if self.record_memory and hasattr(self.model, "last_memory"):
            extras["memory"] = self.model.last_memory.cpu().numpy()
        return PolicyOutput(action.cpu().numpy(), extras)

    # -- learning -------------------------------------------------------------------------
    def train_iteration(self, sampler, tasks) -> IterationResult:
        self.model.eval()
        batch = sampler.run(self, tasks)
        self.model.train()
        metrics = self.update(batch)
        return IterationResult(batch.env_steps, batch.episode_return, batch.episode_success, metrics)

    def update(self, batch: TrialBatch) -> dict[str, float]:
        device = self.device
        valid = torch.from_numpy(batch.valid).to(device)
        reward = torch.from_numpy(batch.reward).to(device)
        value = torch.from_numpy(batch.extras["value"]).to(device)
        advantage, returns = gae(reward, value, valid, self.config.gamma, self.config.gae_lambda)
        inputs = self.batch_inputs(batch)[valid]
        samples = {"logp": torch.from_numpy(batch.extras["logp"]).to(device)[valid],
                   "advantage": advantage[valid], "return": returns[valid],
                   "action": torch.from_numpy(batch.action).to(device)[valid]}

        def evaluate(idx):
            mean, value = self.model(inputs[idx])
            log_std = self.model.log_std.expand_as(mean)
            return (gaussian_log_prob(mean, log_std, samples["action"][idx]),
                    gaussian_entropy(log_std), value)

        return ppo_update(evaluate, samples, self.optimizer, list(self.model.parameters()),
                          self.config, self.generator)

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])


def to_device(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
