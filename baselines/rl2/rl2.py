"""RL2-PPO: a recurrent policy whose memory spans the trial (Duan et al. 2016; Wang et al. 2016).

A GRU reads each step's augmented input (s_t, a_{t-1}, r_{t-1}, d_t), the same working
memory TrMRL embeds. Its hidden state is carried across the episodes of a trial, so the
policy can adapt from one episode to the next, and reset between trials. A Gaussian policy
(learned state-independent std) and a value function read the GRU state.

Training is the package's PPO (:mod:`trmrl.ppo`, via :class:`trmrl.agents.ppo_agent.PPOAgent`)
with minibatches of *whole trials* (``trial_minibatches``): the GRU is unrolled from the zero
state over every step of a trial, and the loss averages over its valid steps (the padding
after an early end weighs 0). There is no truncated BPTT: a trial is at most 400 steps on
MuJoCo and 5,000 on Meta-World, where the forward and backward pass of a minibatch (5 trials,
256-unit GRUs) peak at about 0.7 GB on the CPU, so the full trial fits and the gradient sees
the whole adaptation.

Acting runs one GRU cell step per lockstep step for all trials at once (``torch.gru_cell``
with the ``nn.GRU``'s own weights, so acting and learning compute the same function; on a
GPU the step is replayed from a CUDA graph); learning runs ``nn.GRU`` over [trials, T].

Defaults (``trmrl/configs/rl2.yaml``, which says where each value comes from) follow
garage's RL2PPO examples (GRU 64, gamma 0.99, GAE lambda 0.95, clip 0.2, 10 epochs);
Meta-World gets a 256-unit GRU. The value function has its own GRU by default: this PPO adds
the unscaled value loss, and with gamma 0.99 and raw rewards its gradient would swamp the
policy's in a shared GRU (``shared_gru`` switches).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from trmrl.accel import float32_cudnn
from trmrl.agents.ppo_agent import ModelOutput, RecurrentPPOAgent, to_device
from trmrl.errors import ConfigError
from trmrl.nn import RunningNormalizer, gru_step, make_gru, mlp, scale_leading
from trmrl.ppo import PPOConfig
from trmrl.sampling import TrialBatch


@dataclass
class RL2Config(PPOConfig):
    # `trmrl train` takes its per-env defaults from trmrl/configs/rl2.yaml (which also sets
    # target_kl and init_std per env); these are the values of a bare RL2Config().
    # PPO settings that differ from PPOConfig's (TrMRL's) defaults:
    gamma: float = 0.99  # discount, across the episodes of a trial (garage RL2PPO)
    gae_lambda: float = 0.95  # GAE lambda (garage RL2PPO)
    lr_policy: float = 3e-4  # AdamW lr of the policy GRU, head and log-std
    lr_value: float = 1e-3  # AdamW lr of the value GRU and head
    minibatch_size: int = 5  # whole trials per gradient step (not timesteps)
    max_grad_norm: float = 1.0  # gradient-norm clip over all parameters (0: off)
    # the recurrent model
    gru_size: int = 64  # GRU hidden units (garage's RL2: 64; Meta-World defaults: 256)
    shared_gru: bool = False  # policy and value read one GRU (else one GRU each)
    hidden: tuple[int, ...] = ()  # tanh MLP layers between the GRU state and the heads (): linear
    init_std: float = 0.5  # initial action standard deviation
    normalize_observations: bool = True  # PPOConfig's switch, on: scale observations

    def validate(self) -> None:
        super().validate()
        if self.gru_size <= 0:
            raise ConfigError(f"gru_size must be positive, got {self.gru_size!r}")
        if any(size <= 0 for size in self.hidden):
            raise ConfigError(f"hidden sizes must be positive, got {list(self.hidden)!r}")
        if self.init_std <= 0:
            raise ConfigError(f"init_std must be positive, got {self.init_std!r}")


def unroll_side_by_side(first: nn.GRU, second: nn.GRU, x: torch.Tensor):
    """Both GRUs over x [B, T, in] as one GRU of twice the width, whose recurrent weights are
    block-diagonal: the same function (each unit reads only its own GRU's state), but one
    sequential unroll instead of two: forward and backward ~1.7x faster on a CPU (on a GPU,
    slower than cuDNN's two calls, which keep their weights in one block each).
    Returns (first's outputs, second's outputs), each [B, T, size]."""
    size = first.hidden_size

    def by_gate(name):  # [3 * size, ...] -> [3, size, ...]: PyTorch stacks gates r, z, n
        a, b = getattr(first, name), getattr(second, name)
        return a.view(3, size, *a.shape[1:]), b.view(3, size, *b.shape[1:])

    def interleave(name):  # [3, 2 * size, ...] flattened: gate r of both, then z, then n
        a, b = by_gate(name)
        return torch.cat([a, b], 1).flatten(0, 1)

    hh_first, hh_second = by_gate("weight_hh_l0")
    weight_hh = torch.cat([torch.block_diag(hh_first[g], hh_second[g]) for g in range(3)])
    weights = [interleave("weight_ih_l0"), weight_hh, interleave("bias_ih_l0"), interleave("bias_hh_l0")]
    h0 = x.new_zeros(1, x.shape[0], 2 * size)
    out, _ = torch.gru(x, h0, weights, True, 1, 0.0, first.training, False, True)
    return out[..., :size], out[..., size:]


class RL2Model(nn.Module):
    """GRU(s) over augmented inputs -> Gaussian policy mean (learned std) and value.

    ``forward`` takes {"x": [N, in], "state": [N, state_size]} while acting (one step; the
    output carries the new state and, as its latent, the policy GRU's) or {"x": [B, T, in]}
    when learning (whole trials from the zero state).
    """

    def __init__(self, in_dim: int, act_dim: int, config: RL2Config,
                 normalizer: RunningNormalizer | None = None, side_by_side: bool = False):
        super().__init__()
        self.gru_size = config.gru_size
        # learning with two GRUs: unroll them as one GRU with block-diagonal weights (the same
        # function, faster on a CPU) instead of one call each (cuDNN runs each fast, and the
        # combined weights would cost a copy per call); chosen once, by the agent's device
        self.side_by_side = side_by_side
        # scales the leading inputs (the observation); a_{t-1}, r_{t-1}, d_t pass unchanged
        self.normalizer = normalizer
        self.policy_gru = make_gru(in_dim, config.gru_size)
        self.value_gru = None if config.shared_gru else make_gru(in_dim, config.gru_size)
        self.state_size = config.gru_size * (1 if config.shared_gru else 2)
        self.policy = mlp([config.gru_size, *config.hidden, act_dim], out_gain=0.01)
        self.value = mlp([config.gru_size, *config.hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        x = scale_leading(self.normalizer, inputs["x"])
        if "state" in inputs:  # acting: one cell step for every trial
            state, H = inputs["state"], self.gru_size
            h_policy = gru_step(self.policy_gru, x, state[:, :H])
            if self.value_gru is None:
                new_state = h_value = h_policy
            else:
                h_value = gru_step(self.value_gru, x, state[:, H:])
                new_state = torch.cat([h_policy, h_value], 1)
            # the latent: what the policy acts on (latent maps)
            return ModelOutput(self.policy(h_policy), self.value(h_value).squeeze(-1),
                               state=new_state, latent=h_policy)
        with float32_cudnn(x.device):  # learning: whole trials, [B, T, in]
            if self.value_gru is None:
                h_policy = h_value = self.policy_gru(x)[0]
            elif self.side_by_side:
                h_policy, h_value = unroll_side_by_side(self.policy_gru, self.value_gru, x)
            else:
                h_policy, h_value = self.policy_gru(x)[0], self.value_gru(x)[0]
        return ModelOutput(self.policy(h_policy), self.value(h_value).squeeze(-1))

    def policy_parameters(self):
        return [*self.policy_gru.parameters(), *self.policy.parameters(), self.log_std]

    def value_parameters(self):
        gru = [] if self.value_gru is None else list(self.value_gru.parameters())
        return [*gru, *self.value.parameters()]


class RL2Agent(RecurrentPPOAgent):
    """RL2: a GRU over (s, a, r, d) carried across the episodes of a trial, trained with PPO."""

    name = "rl2"
    defaults = "trmrl.configs:rl2.yaml"
    config_class = RL2Config
    config: RL2Config
    trial_minibatches = True  # the GRU must see each trial from its start

    def build_model(self):
        obs_dim, act_dim = self.suite.observation_dim, self.suite.action_dim
        return RL2Model(obs_dim + act_dim + 2, act_dim, self.config, self.obs_normalizer,
                        side_by_side=self.device.type == "cpu")

    # acting: RecurrentPPOAgent carries the GRU state of every trial
    # -- the same inputs for whole trials ------------------------------------------------------
    def batch_inputs(self, batch: TrialBatch):
        return {"x": to_device(batch.augmented_inputs(), self.device)}
