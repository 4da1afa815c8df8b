"""PEARL's networks: the context encoder with its product of Gaussians, the tanh-Gaussian
policy, Q_1, Q_2, V and target V, and the math of their losses (:mod:`baselines.pearl.agent`
has the algorithm).

The layers are rlkit's (initialisation below); two choices for GPU speed from
:mod:`trmrl.accel` are the same arithmetic on every device: input widths padded to a
multiple of 4 (zero columns, zero weights: tensor cores apply) and bias gradients as
matrix-vector products (:class:`~trmrl.accel.BiasMvLinear`).
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from trmrl.accel import BiasMvLinear, tensor_core_width

if TYPE_CHECKING:
    from baselines.pearl.agent import PEARLConfig

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # clamp of the policy's log standard deviation


def product_of_gaussians(mu: torch.Tensor, var: torch.Tensor,
                         mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalised product of Gaussian factors N(mu_i, var_i) over axis -2.

    mu, var: [..., n, L]; mask: [..., n], 0 for factors to leave out. Returns (mu, var)
    [..., L]: precision = sum_i 1/var_i, mean = sum_i (mu_i / var_i) / precision.
    """
    precision = 1.0 / var.clamp(min=1e-7)
    if mask is not None:
        precision = precision * mask.unsqueeze(-1).to(precision.dtype)
    total = precision.sum(-2)
    out_var = 1.0 / total
    return out_var * (mu * precision).sum(-2), out_var


def kl_to_standard_normal(mu: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, var) || N(0, I)) of diagonal Gaussians, summed over the last axis."""
    return 0.5 * (var + mu.pow(2) - 1.0 - var.log()).sum(-1)


def tanh_gaussian_log_prob(noise: torch.Tensor, log_std: torch.Tensor,
                           pre_tanh: torch.Tensor) -> torch.Tensor:
    """log pi(tanh(u)) for u = mean + std * noise, summed over the action axis."""
    gaussian = -0.5 * noise.pow(2) - log_std - 0.5 * math.log(2 * math.pi)
    log_det = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))  # log(1 - tanh^2)
    return (gaussian - log_det).sum(-1)


class MLP(nn.Module):
    """ReLU MLP with rlkit's initialisation: hidden weights U(+-1/sqrt(fan_in)), hidden biases
    0.1, output weights and biases U(+-out_init).

    The input width is padded to a multiple of 4 with zero columns (zero weights, which stay
    zero: they get no gradient). ``forward`` takes the input as one tensor or as the parts to
    concatenate (the padding joins that one copy); ``frozen=True`` evaluates it with detached
    parameters: gradients reach the inputs but not the weights.
    """

    def __init__(self, sizes: list[int], out_init: float, generator: torch.Generator):
        super().__init__()
        self.in_features = sizes[0]
        sizes = [tensor_core_width(sizes[0]), *sizes[1:]]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        with torch.no_grad():
            for k, layer in enumerate(self.layers):
                fan_in = self.in_features if k == 0 else layer.in_features
                if k == len(self.layers) - 1:
                    nn.init.uniform_(layer.weight, -out_init, out_init, generator=generator)
                    nn.init.uniform_(layer.bias, -out_init, out_init, generator=generator)
                else:
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(layer.weight, -bound, bound, generator=generator)
                    nn.init.constant_(layer.bias, 0.1)
            self.layers[0].weight[:, self.in_features:] = 0.0

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The parts side by side, padded with zero columns to the input width."""
        width = sum(part.shape[-1] for part in parts)
        if width != self.layers[0].in_features:
            parts = [*parts, parts[0].new_zeros((*parts[0].shape[:-1],
                                                 self.layers[0].in_features - width))]
        return torch.cat(parts, -1) if len(parts) > 1 else parts[0]

    def forward(self, x: torch.Tensor | list[torch.Tensor], frozen: bool = False) -> torch.Tensor:
        x = self.join(list(x) if isinstance(x, (list, tuple)) else [x])
        shape = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        last = len(self.layers) - 1
        for k, layer in enumerate(self.layers):
            weight, bias = layer.weight, layer.bias
            if frozen:
                weight, bias = weight.detach(), bias.detach()
            x = BiasMvLinear.apply(x, weight, bias)
            if k < last:
                x = F.relu(x)
        return x.view(*shape, x.shape[-1])


class PEARLNetworks(nn.Module):
    """Context encoder, tanh-Gaussian policy, Q_1, Q_2, V and target V."""

    def __init__(self, obs_dim: int, act_dim: int, context_width: int, config: PEARLConfig,
                 generator: torch.Generator):
        super().__init__()
        L, hidden = config.latent_dim, list(config.hidden)
        self.latent_dim, self.act_dim = L, act_dim
        self.encoder = MLP([context_width, *config.encoder_hidden, 2 * L], 3e-3, generator)
        self.policy = MLP([obs_dim + L, *hidden, 2 * act_dim], 1e-3, generator)  # mean, log_std
        self.q1 = MLP([obs_dim + act_dim + L, *hidden, 1], 3e-3, generator)
        self.q2 = MLP([obs_dim + act_dim + L, *hidden, 1], 3e-3, generator)
        self.v = MLP([obs_dim + L, *hidden, 1], 3e-3, generator)
        self.v_target = copy.deepcopy(self.v)
        self.v_target.requires_grad_(False)

    def posterior(self, context: torch.Tensor,
                  mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, var) [..., L] of q(z | context) for context [..., n, context_width]."""
        params = self.encoder(context)
        mu, var = params[..., :self.latent_dim], F.softplus(params[..., self.latent_dim:])
        return product_of_gaussians(mu, var, mask)

    def policy_head(self, obs_z, policy: MLP | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, log_std) of the pre-tanh Gaussian for inputs (s, z) (a tensor or parts), by
        ``policy`` (default: this one; a copy elsewhere, see PEARLAgent.policy_action)."""
        out = (policy or self.policy)(obs_z)
        mean, log_std = out[..., :self.act_dim], out[..., self.act_dim:]
        return mean, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
