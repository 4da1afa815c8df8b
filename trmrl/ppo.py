"""PPO over whole trials, shared by TrMRL and the reference agents.

A trial (K episodes on one task) is one sequence for the return: GAE runs across the
episode boundaries inside a trial (the memory carries over, so the value does too) and
stops at the trial's end, where the memory is dropped. Each agent turns the batch into
samples (a dict of tensors with a leading sample axis); minibatches are drawn over those
samples. A sample is one timestep (TrMRL, the references: each step carries its own
context) or one whole trial (recurrent agents such as RL2, whose GRU must be unrolled over
the trial); trial samples are [trials, T, ...] with a "weight" [trials, T] that is 0 on the
padding after a trial's end, and the loss averages over the weighted timesteps.

An update runs one or two *phases*, each a loss minimised by its own AdamW for ``epochs``
passes over shuffled minibatches: one joint phase (policy + value loss, one optimiser with a
parameter group each), or, as the released TrMRL code does, a policy phase and then a value
phase with optimisers of their own (``update_order``).

:class:`PPOUpdate` runs an update op by op; on a GPU, :class:`trmrl.accel.GraphedPPOUpdate`
replays the same minibatch steps (forward, backward, AdamW) from CUDA graphs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
import torch.nn as nn

from trmrl.errors import ConfigError
from trmrl.settings import AgentConfig

if TYPE_CHECKING:
    from trmrl.accel import OptimizerPlacement

# evaluate(minibatch) -> (log_prob [B], entropy [B], value [B]) under the current parameters
Evaluate = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
STATS = ("loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction")
KL = STATS.index("approx_kl")
# |log ratio| cap: exp(89) overflows float32, and inf x advantage makes the loss NaN. Within
# the cap nothing changes; beyond it the clipped surrogate has no useful gradient anyway.
LOG_RATIO_LIMIT = 20.0
UPDATE_ORDERS = ("joint", "policy_then_value")
VALUE_LOSSES = ("mse", "gaussian_nll")
VALUE_TARGETS = ("lambda_return", "discounted_return")
LR_SCHEDULES = ("constant", "decay")


@dataclass
class PPOConfig(AgentConfig):
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
    # scale observations by a running mean/std (statistics updated after each iteration)
    normalize_observations: bool = False
    # -- the update's form. Each default is the behaviour from before the key existed (old
    # run directories keep it); TrMRL's package YAML sets the released code's values
    # "joint": one loss (policy + value) and one AdamW step per minibatch; "policy_then_value":
    # the released code's two AdamW optimisers, `epochs` passes of the policy loss, then
    # `epochs` passes of the value loss, each over minibatches shuffled of their own
    update_order: str = "joint"
    # "mse": 0.5 (V - target)^2; "gaussian_nll": -log N(target; V, sigma^2) with a learned
    # sigma (initially 1), the released GaussianMLPValueFunction's loss
    value_loss: str = "mse"
    # "lambda_return": GAE advantage + V (the TD(lambda) target); "discounted_return": the
    # discounted sum of the trial's remaining rewards, as the released code regresses on
    value_target: str = "lambda_return"
    lr_schedule_policy: str = "constant"  # "constant" | "decay" (below) for the policy lr
    lr_schedule_value: str = "constant"  # the same for the value lr
    # "decay": the lr falls to lr_min_factor x its start, in equal geometric steps, one per
    # "epoch" from epoch lr_decay_start to lr_decay_end; an epoch is, as released,
    # epochs x (trials x episodes x horizon) // minibatch_size minibatch steps of the
    # optimiser (about one iteration)
    lr_decay_start: int = 0
    lr_decay_end: int = 0
    lr_min_factor: float = 1.0

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
        choices = {"update_order": UPDATE_ORDERS, "value_loss": VALUE_LOSSES,
                   "value_target": VALUE_TARGETS, "lr_schedule_policy": LR_SCHEDULES,
                   "lr_schedule_value": LR_SCHEDULES}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ConfigError(f"{name} must be one of {', '.join(valid)}, got "
                                  f"{getattr(self, name)!r}")
        if "decay" in (self.lr_schedule_policy, self.lr_schedule_value):
            if not 0 <= self.lr_decay_start < self.lr_decay_end:
                raise ConfigError("an lr schedule 'decay' needs 0 <= lr_decay_start < "
                                  f"lr_decay_end, got {self.lr_decay_start} and {self.lr_decay_end}")
            if not 0 < self.lr_min_factor <= 1:
                raise ConfigError(f"lr_min_factor must be in (0, 1], got {self.lr_min_factor!r}")
            if self.lr_decay != 1:
                raise ConfigError("lr_decay (per iteration) and an lr schedule 'decay' exclude "
                                  "each other; set lr_decay=1 or both schedules to constant")


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


def discounted_returns(rewards: np.ndarray, valid: np.ndarray, gamma: float) -> np.ndarray:
    """The discounted sum of each step's remaining rewards in its trial [N, T]; 0 on padding."""
    rewards = np.where(valid, rewards, 0).astype(np.float32)
    returns = np.zeros_like(rewards)
    running = np.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * valid


def gaussian_log_prob(mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((action - mean) / log_std.exp()) ** 2 - log_std
            - 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mu_q, logvar_q, mu_p, logvar_p) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last axis."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp()
                  - 1).sum(-1)


def gaussian_entropy(log_std: torch.Tensor) -> torch.Tensor:
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def make_optimizer(groups: list[tuple[str, list[nn.Parameter], float, str]], config: PPOConfig,
                   placement: OptimizerPlacement) -> torch.optim.Optimizer:
    """AdamW over ``groups`` of (name, parameters, lr, lr schedule), with the kernels and
    state placement of ``placement``. Each group keeps its starting lr and schedule for
    :func:`set_lrs`."""
    groups = [{"params": list(params), "lr": lr, "name": name, "base_lr": lr, "schedule": schedule}
              for name, params, lr, schedule in groups]
    return placement.place(torch.optim.AdamW(groups, weight_decay=config.weight_decay,
                                             **placement.options()))


def decay_factor(step: int, steps_per_epoch: int, config: PPOConfig) -> float:
    """The lr factor at an optimiser's minibatch step ``step`` (0-based, over the run) under
    the schedule "decay": the released LRDecayOptimizerWrapper, a MultiStepLR with one
    milestone every ``steps_per_epoch`` steps from epoch lr_decay_start to lr_decay_end, each
    multiplying the lr by gamma = lr_min_factor ** (1 / milestones)."""
    milestones = config.lr_decay_end - config.lr_decay_start
    passed = (step - config.lr_decay_start * steps_per_epoch) // steps_per_epoch + 1
    gamma = config.lr_min_factor ** (1 / milestones)
    return gamma ** min(max(passed, 0), milestones)


def set_lrs(optimizer: torch.optim.Optimizer, step: int, steps_per_epoch: int,
            config: PPOConfig) -> None:
    """Set the lr of every scheduled group for minibatch step ``step``; constant groups are
    left alone (lr_decay, per iteration, applies to those)."""
    for group in optimizer.param_groups:
        if group.get("schedule", "constant") == "decay":
            lr = group["base_lr"] * decay_factor(step, steps_per_epoch, config)
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)  # in place: the graph reads this tensor
            else:
                group["lr"] = lr


# -- losses: (minibatch, weight) -> (loss, STATS); weight 0 marks padding ---------------------
# Samples may be timesteps (every tensor [B]) or whole trials ([B, T]); ``weight`` has the
# same shape and each term is the weighted mean over every entry.
MinibatchLoss = Callable[[dict[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def policy_terms(log_prob, entropy, minibatch, w, config: PPOConfig):
    """(clipped-surrogate loss, mean entropy, approx. KL, clip fraction); ``w`` sums to 1."""
    advantage = minibatch["advantage"]
    if config.center_advantages:
        centred = advantage - (w * advantage).sum()
        advantage = centred / ((w * centred.pow(2)).sum().sqrt() + 1e-8)
    # padding has no recorded log-prob: keep it out of exp() so 0 x inf can never be NaN
    log_ratio = torch.where(w > 0, log_prob - minibatch["logp"], 0.0)
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantage, ratio.clamp(1 - config.clip, 1 + config.clip) * advantage)
    with torch.no_grad():
        kl = (w * ((ratio - 1) - log_ratio)).sum()
        clipped = (w * ((ratio - 1).abs() > config.clip).float()).sum()
    return -(w * surrogate).sum(), (w * entropy).sum(), kl, clipped


def value_term(value, target, w, config: PPOConfig, log_std: torch.Tensor | None):
    if config.value_loss == "gaussian_nll":
        return (w * (0.5 * ((target - value) / log_std.exp()).pow(2) + log_std
                     + 0.5 * math.log(2 * math.pi))).sum()
    return 0.5 * (w * (value - target).pow(2)).sum()


class JointLoss:
    """Policy and value loss in one (``update_order`` "joint"). Losses are small objects rather
    than closures so that a deep-copied agent's phases use the copy's model."""

    def __init__(self, evaluate: Evaluate, config: PPOConfig,
                 value_log_std: torch.Tensor | None = None):
        self.evaluate, self.config, self.value_log_std = evaluate, config, value_log_std

    def __call__(self, minibatch, weight):
        config = self.config
        log_prob, entropy, value = self.evaluate(minibatch)
        w = weight / weight.sum()
        policy_loss, mean_entropy, kl, clipped = policy_terms(log_prob, entropy, minibatch, w, config)
        value_loss = value_term(value, minibatch["return"], w, config, self.value_log_std)
        loss = policy_loss + value_loss - config.entropy_coef * mean_entropy
        stats = torch.stack([loss, policy_loss, value_loss, mean_entropy, kl, clipped]).detach()
        return loss, stats


class PolicyLoss:
    """The policy phase of "policy_then_value": ``evaluate_policy`` -> (log_prob, entropy)."""

    def __init__(self, evaluate_policy, config: PPOConfig):
        self.evaluate_policy, self.config = evaluate_policy, config

    def __call__(self, minibatch, weight):
        log_prob, entropy = self.evaluate_policy(minibatch)
        w = weight / weight.sum()
        loss, mean_entropy, kl, clipped = policy_terms(log_prob, entropy, minibatch, w, self.config)
        loss = loss - self.config.entropy_coef * mean_entropy
        zero = torch.zeros((), device=loss.device)
        return loss, torch.stack([loss, loss, zero, mean_entropy, kl, clipped]).detach()


class ValueLoss:
    """The value phase of "policy_then_value": ``evaluate_value`` -> value."""

    def __init__(self, evaluate_value, config: PPOConfig,
                 value_log_std: torch.Tensor | None = None):
        self.evaluate_value, self.config, self.value_log_std = evaluate_value, config, value_log_std

    def __call__(self, minibatch, weight):
        w = weight / weight.sum()
        loss = value_term(self.evaluate_value(minibatch), minibatch["return"], w, self.config,
                          self.value_log_std)
        zero = torch.zeros((), device=loss.device)
        return loss, torch.stack([loss, zero, loss, zero, zero, zero]).detach()


@dataclass
class UpdatePhase:
    """One loss minimised by one optimiser for ``epochs`` passes over the samples."""

    loss: MinibatchLoss
    optimizer: torch.optim.Optimizer
    params: list[nn.Parameter]  # what gradient clipping covers
    steps_per_epoch: int = 1  # the lr schedule's "epoch", in minibatch steps (released formula)
    checks_kl: bool = True  # target_kl may end this phase early (the phases with a policy loss)
    # zero the gradients in place instead of dropping them: AdamW then still steps (weight
    # decay) the parameters this loss does not reach, as torch 1.7, which the released code
    # ran on, did; on for "policy_then_value", where the value optimiser holds the policy
    keep_zero_grads: bool = False
    steps: int = 0  # minibatch steps taken over the run: the lr schedule's clock


def minibatch_indices(num: int, config: PPOConfig, generator: torch.Generator):
    """Per epoch, a permutation cut into minibatches; the last may be shorter."""
    for _ in range(config.epochs):
        order = torch.randperm(num, generator=generator)
        for start in range(0, num, config.minibatch_size):
            yield order[start:start + config.minibatch_size]


def ppo_update(phases: list[UpdatePhase], samples: dict[str, torch.Tensor], config: PPOConfig,
               generator: torch.Generator) -> dict[str, float]:
    """Each phase in turn: ``config.epochs`` passes over ``samples`` (each [M, ...]; needs
    "logp", "advantage", "return" and whatever the losses read; optionally "weight", 0 on
    padding, e.g. [M, T] for whole trials), step by step.

    Raises FloatingPointError if the loss went non-finite (checked once per call to avoid
    a device sync per minibatch; the caller then keeps its last good checkpoint).
    """
    device = samples["logp"].device
    results = []
    for phase in phases:
        total = torch.zeros(len(STATS), device=device)
        updates = 0
        for idx in minibatch_indices(samples["logp"].shape[0], config, generator):
            idx = idx.to(device)
            minibatch = {key: value[idx] for key, value in samples.items()}
            weight = minibatch["weight"] if "weight" in minibatch else torch.ones(len(idx), device=device)
            set_lrs(phase.optimizer, phase.steps, phase.steps_per_epoch, config)
            loss, stats = phase.loss(minibatch, weight)
            phase.optimizer.zero_grad(set_to_none=not phase.keep_zero_grads)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(phase.params, config.max_grad_norm)
            phase.optimizer.step()
            total += stats
            updates += 1
            phase.steps += 1
            if phase.checks_kl and kl_exceeded(stats, config):
                break
        results.append((total, updates))
    return finish(results, phases, config)


def kl_exceeded(stats: torch.Tensor, config: PPOConfig) -> bool:
    """Early stop, as Stable-Baselines3's PPO does: the KL between the policy that
    collected the data and the one this step started from, on this step's minibatch,
    exceeded 1.5 x target_kl. Costs one device sync per step (only when it is on)."""
    return config.target_kl > 0 and stats[KL].item() > 1.5 * config.target_kl


def finish(results: list[tuple[torch.Tensor, int]], phases: list[UpdatePhase],
            config: PPOConfig) -> dict[str, float]:
    """Per phase the mean of its steps' stats, summed over phases (a phase leaves the terms
    it does not compute at 0); then lr_decay on every constant-lr group."""
    means = sum(total / max(updates, 1) for total, updates in results)
    out = dict(zip(STATS, means.tolist()))
    if not all(math.isfinite(v) for v in out.values()):
        raise FloatingPointError(f"non-finite PPO loss: {out}")
    # fewer than phases x epochs x minibatches when target_kl stopped it
    out["minibatch_steps"] = sum(updates for _, updates in results)
    for phase in phases:
        for group in phase.optimizer.param_groups:
            if group.get("schedule", "constant") == "decay":
                out[f"lr_{group['name']}"] = float(group["lr"])
                continue
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].mul_(config.lr_decay)  # in place: the graph reads this tensor
            else:
                group["lr"] *= config.lr_decay
    return out


class PPOUpdate:
    """An agent's update: :func:`ppo_update` over its phases, op by op. The agent picks this
    or :class:`trmrl.accel.GraphedPPOUpdate` (the same steps from CUDA graphs) once."""

    def __init__(self, phases: list[UpdatePhase], config: PPOConfig):
        self.phases, self.config = phases, config

    def __call__(self, samples: dict[str, torch.Tensor], generator: torch.Generator,
                 capacity: int) -> dict[str, float]:
        """``capacity``: the most samples an iteration can give (what a graph is sized for)."""
        return ppo_update(self.phases, samples, self.config, generator)

    def reset(self) -> None:
        """Forget what was captured (after a load): nothing here."""
