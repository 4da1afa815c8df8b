"""PPO on the current working memory: an agent with one step of memory.

A Gaussian MLP policy and a value MLP read the step's working memory (s_t, a_{t-1},
r_{t-1}, d_t): the observation, plus the last action and reward, which is all it remembers
of the trial. It sits between the memoryless reference (the observation alone) and RL2 (a
GRU over the whole trial), and shows what an agent in a package of its own needs: a config
dataclass, a model, the inputs while acting and learning, a name and a defaults file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from trmrl.agents.ppo_agent import ModelOutput, PPOAgent, to_device
from trmrl.errors import ConfigError
from trmrl.nn import RunningNormalizer, mlp, scale_leading
from trmrl.ppo import PPOConfig


@dataclass
class WorkingMemoryConfig(PPOConfig):
    hidden: tuple[int, ...] = (64, 64)  # tanh MLP sizes of policy and value
    init_std: float = 0.5  # initial action standard deviation

    def validate(self) -> None:
        super().validate()
        if any(size <= 0 for size in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)!r}")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be positive, got {self.init_std!r}")


class WorkingMemoryMLP(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, config: WorkingMemoryConfig,
                 normalizer: RunningNormalizer | None):
        super().__init__()
        self.normalizer = normalizer  # None unless normalize_observations
        self.policy = mlp([in_dim, *config.hidden, act_dim], out_gain=0.01)
        self.value = mlp([in_dim, *config.hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        """(action mean, value) of working memories ``inputs["x"]`` [..., in_dim]."""
        x = scale_leading(self.normalizer, inputs["x"])  # the observation comes first
        return ModelOutput(self.policy(x), self.value(x).squeeze(-1))

    def policy_parameters(self):
        return [*self.policy.parameters(), self.log_std]

    def value_parameters(self):
        return list(self.value.parameters())


class WorkingMemoryAgent(PPOAgent):
    """PPO MLP on the current working memory (s_t, a_{t-1}, r_{t-1}, d_t)."""

    name = "my_agent"  # the entry point's name in pyproject.toml
    defaults = "my_agent:defaults.yaml"  # shipped as package data
    config_class = WorkingMemoryConfig
    config: WorkingMemoryConfig
    # the trainer settings (steps, num_workers, cuda_graphs, ...) are PPOAgent's
    # (settings_class, read as self.settings): this agent adds no switch of its own

    def build_model(self):
        suite = self.suite
        return WorkingMemoryMLP(suite.observation_dim + suite.action_dim + 2, suite.action_dim,
                                self.config, self.obs_normalizer)

    # acting: PPOAgent's defaults feed each step's working memory as {"x": [N, in_dim]}
    def batch_inputs(self, batch):
        """The same working memories for every step of the batch's trials, [N, T, in_dim]."""
        return {"x": to_device(batch.augmented_inputs(), self.device)}
