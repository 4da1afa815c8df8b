"""PPO over whole trials, shared by TrMRL and the reference agents.

A trial (K episodes on one task) is one sequence for the return: GAE runs across the
episode boundaries inside a trial (the memory carries over, so the value does too) and
stops at the trial's end, where the memory is dropped. Each agent turns the batch into
samples (a dict of tensors with a leading sample axis); minibatches are drawn over those
samples. A sample is one timestep (TrMRL, the references: each step carries its own
context) or one whole trial (recurrent agents such as RL2, whose GRU must be unrolled over
the trial); trial samples are [trials, T, ...] with a "weight" [trials, T] that is 0 on the
padding after a trial's end, and the loss averages over the weighted timesteps.

On a GPU the whole minibatch step (forward, backward, AdamW) is captured once in a CUDA
graph and replayed: the same arithmetic as the eager path without a kernel launch per op.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn

from trmrl.agents.base import RunConfig
from trmrl.errors import ConfigError

# evaluate(minibatch) -> (log_prob [B], entropy [B], value [B]) under the current parameters
Evaluate = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
STATS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
KL = STATS.index("approx_kl")
# |log ratio| cap: exp(89) overflows float32, and inf x advantage makes the loss NaN. Within
# the cap nothing changes; beyond it the clipped surrogate has no useful gradient anyway.
LOG_RATIO_LIMIT = 20.0


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
    minibatch_size: int = 256  # samples per gradient step: timesteps (whole trials for RL2)
    center_advantages: bool = False  # standardise advantages per minibatch
    entropy_coef: float = 0.0  # entropy bonus
    max_grad_norm: float = 0.0  # gradient-norm clip (0: off, as in the released code)
    target_kl: float = 0.0  # end the iteration's updates after a step whose KL > 1.5x this (0: off)
    cuda_graphs: bool = True  # on a GPU, replay the minibatch step from a CUDA graph
    # on a GPU with cuda_graphs: torch.compile the model inside the graphs, so they replay
    # fewer, fused kernels (costs ~10-30 s of compiling per batch shape at the start)
    torch_compile: bool = False

    def validate(self) -> None:
        super().validate()
        checks = {"gamma": 0 <= self.gamma <= 1, "gae_lambda": 0 <= self.gae_lambda <= 1,
                  "clip": self.clip > 0, "lr_policy": self.lr_policy > 0,
                  "lr_value": self.lr_value > 0, "lr_decay": 0 < self.lr_decay <= 1,
                  "epochs": self.epochs > 0, "minibatch_size": self.minibatch_size > 0,
                  "max_grad_norm": self.max_grad_norm >= 0, "target_kl": self.target_kl >= 0}
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"{name} out of range: {getattr(self, name)!r}")


def gae(rewards: np.ndarray, values: np.ndarray, valid: np.ndarray, gamma: float,
        lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and value targets for [N, T] trials; padding (valid False) gets zeros.

    Valid steps form a prefix of each row, and the value after a trial's last step is 0.
    """
    rewards, values = rewards.astype(np.float32), values.astype(np.float32)
    mask = valid.astype(np.float32)
    advantages = np.zeros_like(rewards)
    last = np.zeros_like(rewards[:, 0])
    next_value = np.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
        next_value = values[:, t] * mask[:, t]  # padding after the end bootstraps with 0
    return advantages, advantages + values


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
                  - 1).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def make_optimizer(policy_params, value_params, config: PPOConfig,
                   graphed: bool = False) -> torch.optim.Optimizer:
    """AdamW with one lr per group; graphed: capturable, with lrs as device tensors."""
    groups = [{"params": list(policy_params), "lr": config.lr_policy},
              {"params": list(value_params), "lr": config.lr_value}]
    if graphed:
        device = groups[0]["params"][0].device
        for group in groups:
            group["lr"] = torch.tensor(group["lr"], device=device)
    if graphed:  # one fused kernel per step instead of a few per parameter tensor
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay, fused=True,
                                 capturable=True)
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def minibatch_loss(evaluate: Evaluate, minibatch: dict[str, torch.Tensor], weight: torch.Tensor,
                   config: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped-surrogate PPO loss; ``weight`` 0 marks padding. Returns (loss, STATS).

    Samples may be timesteps (every tensor [B]) or whole trials ([B, T]); ``weight`` has the
    same shape and the loss is the weighted mean over every entry.
    """
    log_prob, entropy, value = evaluate(minibatch)
    w = weight / weight.sum()
    advantage = minibatch["advantage"]
    if config.center_advantages:
        centred = advantage - (w * advantage).sum()
        advantage = centred / ((w * centred.pow(2)).sum().sqrt() + 1e-8)
    # padding has no recorded log-prob: keep it out of exp() so 0 x inf can never be NaN
    log_ratio = torch.where(weight > 0, log_prob - minibatch["logp"], 0.0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantage, ratio.clamp(1 - config.clip, 1 + config.clip) * advantage)
    policy_loss = -(w * surrogate).sum()
    value_loss = 0.5 * (w * (value - minibatch["return"]).pow(2)).sum()
    mean_entropy = (w * entropy).sum()
    loss = policy_loss + value_loss - config.entropy_coef * mean_entropy
    with torch.no_grad():
        stats = torch.stack([loss, policy_loss, value_loss, mean_entropy,
                             (w * ((ratio - 1) - log_ratio)).sum(),
                             (w * ((ratio - 1).abs() > config.clip).float()).sum()])
    return loss, stats


def _minibatch_indices(num: int, config: PPOConfig, generator: torch.Generator):
    """Per epoch, a permutation cut into minibatches; the last may be shorter."""
    for _ in range(config.epochs):
        order = torch.randperm(num, generator=generator)
        for start in range(0, num, config.minibatch_size):
            yield order[start:start + config.minibatch_size]


def ppo_update(evaluate: Evaluate, samples: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               params: list[nn.Parameter], config: PPOConfig,
               generator: torch.Generator) -> dict[str, float]:
    """``config.epochs`` passes of PPO over ``samples`` (each [M, ...]; needs "logp",
    "advantage", "return" and whatever ``evaluate`` reads; optionally "weight", 0 on
    padding, e.g. [M, T] for whole trials), step by step (eager).

    Raises FloatingPointError if the loss went non-finite (checked once per call to avoid
    a device sync per minibatch; the caller then keeps its last good checkpoint).
    """
    device = samples["logp"].device
    total = torch.zeros(len(STATS), device=device)
    updates = 0
    for idx in _minibatch_indices(samples["logp"].shape[0], config, generator):
        idx = idx.to(device)
        minibatch = {key: value[idx] for key, value in samples.items()}
        weight = minibatch["weight"] if "weight" in minibatch else torch.ones(len(idx), device=device)
        loss, stats = minibatch_loss(evaluate, minibatch, weight, config)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.max_grad_norm > 0:
            nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        total += stats
        updates += 1
        if _kl_exceeded(stats, config):
            break
    return _finish(total, updates, optimizer, config)


def _kl_exceeded(stats: torch.Tensor, config: PPOConfig) -> bool:
    """Early stop, as Stable-Baselines3's PPO does: the KL between the policy that
    collected the data and the one this step started from, on this step's minibatch,
    exceeded 1.5 x target_kl. Costs one device sync per step (only when it is on)."""
    return config.target_kl > 0 and stats[KL].item() > 1.5 * config.target_kl


def _finish(total: torch.Tensor, updates: int, optimizer, config: PPOConfig) -> dict[str, float]:
    out = dict(zip(STATS, (total / max(updates, 1)).tolist()))
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite PPO loss: {out}")
    out["minibatch_steps"] = updates  # fewer than epochs x minibatches when target_kl stopped it
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].mul_(config.lr_decay)  # in place: the graph reads this tensor
        else:
            group["lr"] *= config.lr_decay
    return out


class GraphedPPOUpdate:
    """PPO minibatch steps replayed from one CUDA graph.

    Samples are copied into static buffers of a fixed capacity (the most timesteps an
    iteration can produce); each replay gathers one minibatch by index, so the last,
    shorter minibatch of an epoch is padded with weight-0 rows. Capture runs warm-up steps,
    which change the parameters and optimiser state: both are restored in place afterwards.
    """

    def __init__(self, evaluate: Evaluate, example: dict[str, torch.Tensor], capacity: int,
                 optimizer: torch.optim.Optimizer, params: list[nn.Parameter], config: PPOConfig):
        device = example["logp"].device
        self.config, self.optimizer = config, optimizer
        self.buffers = {k: torch.zeros((capacity, *v.shape[1:]), dtype=v.dtype, device=device)
                        for k, v in example.items()}
        size = config.minibatch_size
        self.index = torch.zeros(size, dtype=torch.long, device=device)
        self.weight = torch.ones(size, device=device)
        self.total = torch.zeros(len(STATS), device=device)
        self.last = torch.zeros(len(STATS), device=device)  # the latest step's stats

        def step():
            minibatch = {k: v[self.index] for k, v in self.buffers.items()}
            loss, stats = minibatch_loss(evaluate, minibatch, self.weight, config)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            self.total.add_(stats)
            self.last.copy_(stats)

        saved_params = [p.detach().clone() for p in params]
        saved_state = copy.deepcopy(optimizer.state_dict()["state"])
        self.buffers["logp"].zero_()  # warm-up data: finite, any values do
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                optimizer.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)
        optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            step()
        with torch.no_grad():  # undo the warm-up steps, keeping every tensor's address
            for param, saved in zip(params, saved_params):
                param.copy_(saved)
            for key, state in optimizer.state_dict()["state"].items():
                for name, value in state.items():
                    if isinstance(value, torch.Tensor):
                        old = saved_state.get(key, {}).get(name)
                        value.copy_(old if old is not None else torch.zeros_like(value))

    def __call__(self, samples: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, float]:
        num = samples["logp"].shape[0]
        if num > self.buffers["logp"].shape[0]:
            raise ValueError(f"{num} samples exceed the graph's capacity {self.buffers['logp'].shape[0]}")
        for key, buffer in self.buffers.items():
            buffer[:num].copy_(samples[key])
        size = self.config.minibatch_size
        chunks, weights = [], []
        for idx in _minibatch_indices(num, self.config, generator):
            weight = torch.ones(size)
            if len(idx) < size:  # pad with row 0 at weight 0
                weight[len(idx):] = 0
                idx = torch.cat([idx, torch.zeros(size - len(idx), dtype=idx.dtype)])
            chunks.append(idx)
            weights.append(weight)
        device = self.index.device
        all_index = torch.stack(chunks).to(device, non_blocking=True)
        all_weight = torch.stack(weights).to(device, non_blocking=True)
        self.total.zero_()
        updates = 0
        for i in range(len(chunks)):
            self.index.copy_(all_index[i])
            self.weight.copy_(all_weight[i])
            self.graph.replay()
            updates += 1
            if _kl_exceeded(self.last, self.config):
                break
        return _finish(self.total, updates, self.optimizer, self.config)
