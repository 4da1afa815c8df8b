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

from trmrl.agents.ppo_agent import PPOAgent, mlp, to_device
from trmrl.ppo import PPOConfig


@dataclass
class ReferenceConfig(PPOConfig):
    hidden: tuple[int, ...] = (64, 64)  # tanh MLP sizes of policy and value
    init_std: float = 0.5  # initial action standard deviation
    normalize_observations: bool = False  # scale observations by a running mean/std


class RunningNormalizer(nn.Module):
    """Observation scaling by running mean and variance, updated once per training batch.

    An option for inputs of very different scales, e.g. HalfCheetah's absolute torso x (up
    to ~30 m in an episode) next to joint angles.
    """

    def __init__(self, dim: int, clip: float = 10.0):
        super().__init__()
        self.clip = clip
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge the moments of ``x`` [M, dim] (Chan et al.'s parallel update)."""
        x = x.to(torch.float64)
        n, mean, var = x.shape[0], x.mean(0), x.var(0, unbiased=False)
        total = self.count + n
        delta = mean - self.mean
        self.var.copy_((self.var * self.count + var * n + delta ** 2 * self.count * n / total) / total)
        self.mean.add_(delta * n / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - self.mean.float()) / (self.var.float() + 1e-8).sqrt()
        return scaled.clamp(-self.clip, self.clip)


class GaussianMLP(nn.Module):
    def __init__(self, in_dim: int, act_dim: int, hidden: tuple[int, ...], init_std: float,
                 obs_dim: int = 0, normalize: bool = False):
        super().__init__()
        # scales the first obs_dim inputs (the observation); task features pass unchanged
        self.normalizer = RunningNormalizer(obs_dim) if normalize else None
        self.policy = mlp([in_dim, *hidden, act_dim], out_gain=0.01)
        self.value = mlp([in_dim, *hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), float(np.log(init_std))))

    def forward(self, inputs):
        x = inputs["x"]
        if self.normalizer is not None:
            obs_dim = self.normalizer.mean.shape[0]
            x = torch.cat([self.normalizer(x[..., :obs_dim]), x[..., obs_dim:]], -1)
        return self.policy(x), self.value(x).squeeze(-1)

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
                           self.config.init_std, self.suite.observation_dim,
                           self.config.normalize_observations)

    def update(self, batch):
        # statistics move between iterations only, so acting and learning in one
        # iteration see identically scaled inputs (the PPO ratio starts at 1)
        metrics = super().update(batch)
        if self.model.normalizer is not None:
            self.model.normalizer.update(to_device(batch.obs[batch.valid], self.device))
        return metrics

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
