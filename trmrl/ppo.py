"""PPO over whole trials, shared by TrMRL and the reference agents.

A trial (K episodes on one task) is one sequence for the return: GAE runs across the
episode boundaries inside a trial (the memory carries over, so the value does too) and
stops at the trial's end, where the memory is dropped. Each agent turns the batch into
per-sample model inputs; minibatches are drawn over those samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from trmrl.agents.base import RunConfig
from trmrl.errors import ConfigError


@dataclass
class PPOConfig(RunConfig):
    gamma: float = 0.9  # discount, across the episodes of a trial
    gae_lambda: float = 0.8  # GAE lambda
    clip: float = 0.2  # PPO probability-ratio clip
    lr_policy: float = 3e-5  # AdamW lr of the policy (and of a shared encoder)
    lr_value: float = 3e-5  # AdamW lr of the value function
    lr_decay: float = 1.0  # geometric lr factor applied after every iteration (1: constant)
    weight_decay: float = 0.0  # AdamW weight decay
    epochs: int = 10  # passes over the iteration's data
    minibatch_size: int = 256  # samples (timesteps) per gradient step
    center_advantages: bool = False  # standardise advantages per minibatch
    entropy_coef: float = 0.0  # entropy bonus
    max_grad_norm: float = 0.0  # gradient-norm clip (0: off, as in the released code)

    def validate(self) -> None:
        super().validate()
        checks = {"gamma": 0 <= self.gamma <= 1, "gae_lambda": 0 <= self.gae_lambda <= 1,
                  "clip": self.clip > 0, "lr_policy": self.lr_policy > 0,
                  "lr_value": self.lr_value > 0, "lr_decay": 0 < self.lr_decay <= 1,
                  "epochs": self.epochs > 0, "minibatch_size": self.minibatch_size > 0,
                  "max_grad_norm": self.max_grad_norm >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} out of range: {getattr(self, name)!r}")


def gae(rewards: torch.Tensor, values: torch.Tensor, valid: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and value targets for [N, T] trials; padding (valid False) gets zeros.

    Valid steps form a prefix of each row, and the value after a trial's last step is 0.
    """
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        mask = valid[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask
        advantages[:, t] = last
        next_value = values[:, t] * mask  # padding after the end bootstraps with 0
    return advantages, advantages + values


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def make_optimizer(policy_params, value_params, config: PPOConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": list(policy_params), "lr": config.lr_policy},
                              {"params": list(value_params), "lr": config.lr_value}],
                             weight_decay=config.weight_decay)


def ppo_update(evaluate, samples: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], config: PPOConfig,
               generator: torch.Generator) -> dict[str, float]:
    """``config.epochs`` passes of clipped-surrogate PPO over ``samples``.

    ``evaluate(indices)`` returns (log_prob, entropy, value) of those samples under the
    current parameters; ``samples`` holds "logp", "advantage", "return" of shape [M].
    Raises FloatingPointError if the loss went non-finite (checked once per call to avoid
    a device sync per minibatch; the caller then keeps its last good checkpoint).
    """
    num = samples["logp"].shape[0]
    device = samples["logp"].device
    # statistics stay on the device: no host round trip per minibatch
    stats = {k: torch.zeros((), device=device) for k in
             ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")}
    updates = 0
    for _ in range(config.epochs):
        order = torch.randperm(num, generator=generator).to(device)
        for start in range(0, num, config.minibatch_size):
            idx = order[start:start + config.minibatch_size]
            log_prob, entropy, value = evaluate(idx)
            advantage = samples["advantage"][idx]
            if config.center_advantages and len(idx) > 1:
                advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
            log_ratio = log_prob - samples["logp"][idx]
            ratio = log_ratio.exp()
            policy_loss = -torch.min(ratio * advantage,
                                     ratio.clamp(1 - config.clip, 1 + config.clip) * advantage).mean()
            value_loss = 0.5 * (value - samples["return"][idx]).pow(2).mean()
            loss = policy_loss + value_loss - config.entropy_coef * entropy.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            with torch.no_grad():
                stats["loss"] += loss.detach()
                stats["policy_loss"] += policy_loss.detach()
                stats["value_loss"] += value_loss.detach()
                stats["entropy"] += entropy.mean()
                stats["approx_kl"] += ((ratio - 1) - log_ratio).mean()
                stats["clip_fraction"] += ((ratio - 1).abs() > config.clip).float().mean()
            updates += 1
    out = {k: v.item() / max(updates, 1) for k, v in stats.items()}
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite PPO loss: {out}")
    for group in optimizer.param_groups:
        group["lr"] *= config.lr_decay
    return out
