"""Network pieces the agents share: MLPs, the running observation normaliser, GRU helpers
(TF32 for cuDNN's GRU is :func:`trmrl.accel.float32_cudnn`)."""

from __future__ import annotations

import torch
import torch.nn as nn


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


class RunningNormalizer(nn.Module):
    """Scaling by running mean and variance (float64 statistics), clipped to +-``clip``.

    An option for inputs of very different scales, e.g. HalfCheetah's absolute torso x (up
    to ~30 m in an episode) next to joint angles. The caller decides when statistics move;
    the PPO agents move them after each update, so that acting and learning in one
    iteration see identically scaled inputs (the PPO ratio starts at 1).
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
        """``x`` [..., dim] scaled."""
        scaled = (x - self.mean.float()) / (self.var.float() + 1e-8).sqrt()
        return scaled.clamp(-self.clip, self.clip)


def scale_leading(normalizer: RunningNormalizer | None, x: torch.Tensor) -> torch.Tensor:
    """``x`` [..., D] with its first ``dim`` features (the observation, where inputs are
    (s_t, a_{t-1}, r_{t-1}, d_t) or (s_t, task)) scaled and the rest unchanged; ``x`` itself
    without a normaliser."""
    if normalizer is None:
        return x
    dim = normalizer.mean.shape[0]
    if x.shape[-1] == dim:
        return normalizer(x)
    return torch.cat([normalizer(x[..., :dim]), x[..., dim:]], -1)


def make_gru(in_dim: int, size: int) -> nn.GRU:
    """One GRU layer over [B, T, in], orthogonal weights and zero biases (as CleanRL's LSTM)."""
    gru = nn.GRU(in_dim, size, batch_first=True)
    for name, param in gru.named_parameters():
        if name.startswith("weight"):
            nn.init.orthogonal_(param)
        else:
            nn.init.zeros_(param)
    return gru


def gru_step(gru: nn.GRU, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One step of ``gru`` for a batch: x [N, in], h [N, size] -> the new h [N, size], with
    the ``nn.GRU``'s own weights, so that acting step by step and learning over whole
    trials compute the same function."""
    return torch.gru_cell(x, h, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)
