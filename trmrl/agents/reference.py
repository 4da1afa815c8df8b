"""Reference agents that bound every env: ``oracle`` and ``memoryless``.

Both are PPO with Gaussian MLP policies on the same code as TrMRL. The oracle observes the
task parameters (the best a meta-learner could infer); the memoryless agent sees only the
current observation (what a policy achieves without adapting). A normalised score
(R - R_memoryless) / (R_oracle - R_memoryless) puts envs on one scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from trmrl.agents.ppo_agent import ModelOutput, PPOAgent, to_device
from trmrl.nn import RunningNormalizer, mlp, scale_leading
from trmrl.ppo import PPOConfig


@dataclass
class ReferenceConfig(PPOConfig):
    hidden: tuple[int, ...] = (64, 64)  # tanh MLP sizes of policy and value
    init_std: float = 0.5  # initial action standard deviation


class GaussianMLP(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, hidden: tuple[int, ...], init_std: float,
                 normalizer: RunningNormalizer | None = None):
        super().__init__()
        # scales the leading inputs (the observation); task features pass unchanged
        self.normalizer = normalizer
        self.policy = mlp([in_dim, *hidden, act_dim], out_gain=0.01)
        self.value = mlp([in_dim, *hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), float(np.log(init_std))))

    def forward(self, inputs):
        x = scale_leading(self.normalizer, inputs["x"])
        return ModelOutput(self.policy(x), self.value(x).squeeze(-1))

    def policy_parameters(self):
        return [*self.policy.parameters(), self.log_std]

    def value_parameters(self):
        return list(self.value.parameters())


class MemorylessAgent(PPOAgent):
    """PPO MLP on the current observation alone: the lower bound of every env."""

    name = "memoryless"
    defaults = "trmrl.configs:memoryless.yaml"
    config_class = ReferenceConfig
    config: ReferenceConfig

    def build_model(self):
        return GaussianMLP(self.input_dim(), self.suite.action_dim, self.config.hidden,
                           self.config.init_std, self.obs_normalizer)

    def input_dim(self) -> int:
        return self.suite.observation_dim

    def step_features(self, step):
        return step.obs  # no memory: PPOAgent's default advance feeds it as {"x": obs}

    def batch_inputs(self, batch):
        return {"x": to_device(batch.obs, self.device)}


class OracleAgent(MemorylessAgent):
    """PPO MLP that also observes the task parameters: the upper bound of every env."""

    name = "oracle"
    defaults = "trmrl.configs:oracle.yaml"

    def input_dim(self) -> int:
        probe = self.suite.tasks("test", 0, 1)[0]
        return self.suite.observation_dim + len(self.suite.task_features(probe))

    def step_features(self, step):
        return np.concatenate([step.obs, step.task_features], -1)

    def batch_inputs(self, batch):
        features = np.broadcast_to(batch.task_features[:, None],
                                   (*batch.obs.shape[:2], batch.task_features.shape[-1]))
        return {"x": to_device(np.concatenate([batch.obs, features], -1), self.device)}
