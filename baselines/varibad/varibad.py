"""VariBAD: a variational belief over the task, and a policy on state + belief (Zintgraf et al. 2020).

A GRU encoder reads the trial's working memory (s_t, a_{t-1}, r_{t-1}, d_t) and outputs a
Gaussian posterior q(m | tau_{:t}) = N(mu_t, sigma_t^2) over a latent task m; its state is
carried across the episodes of a trial and reset between trials. The policy and value MLPs
(128, 128, tanh) read the observation and the belief (mu_t, log sigma_t^2), detached: the
policy gradient does not reach the encoder (as published).

The encoder is trained as a VAE on trials from a buffer of recent ones: for beliefs at
sampled times t (the prior, before any step, included) the reward decoder p(r_j | m, s_j,
a_j, s_{j+1}) reconstructs the rewards of *every* step j of the trial, past and future, and
the KL term pulls each posterior towards the previous one (the first towards N(0, I)):

    loss = mean_t [ sum_j (r_hat_j(m ~ q_t) - r_j)^2 + kl_weight * KL(q_t || q_{t-1}) ]

(a Gaussian reward likelihood of fixed variance, so reconstruction is a squared error).
Each iteration: PPO on the policy with the beliefs the encoder gave while acting, then
``vae_updates`` VAE steps on batches of ``vae_batch_trials`` trials from the buffer.

Deviations, all ours: the encoder reads the same working memory as TrMRL and RL2 (so at an
episode boundary s_t is the reset observation, flagged by d_t, rather than the last state of
the previous episode); observations are scaled by one running normaliser for encoder,
decoder and policy; PPO updates once per ``trials_per_update`` whole trials (VariBAD updates
every 200 steps of 16 processes) with the published number of epochs and minibatches.
Defaults and their sources: ``trmrl/configs/varibad.yaml``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from trmrl.accel import float32_cudnn
from trmrl.agents.ppo_agent import ModelOutput, RecurrentPPOAgent, to_device
from trmrl.errors import ConfigError
from trmrl.nn import RunningNormalizer, gru_step, make_gru, mlp, scale_leading
from trmrl.ppo import PPOConfig, gaussian_kl
from trmrl.sampling import TrialBatch


@dataclass
class VariBADConfig(PPOConfig):
    # `trmrl train` takes per-env defaults from trmrl/configs/varibad.yaml; these are the
    # values of a bare VariBADConfig() (VariBAD's MuJoCo settings).
    gamma: float = 0.97  # discount (VariBAD's MuJoCo configs)
    gae_lambda: float = 0.9  # GAE lambda
    clip: float = 0.1  # PPO ratio clip
    lr_policy: float = 7e-4  # Adam lr of the policy (and of the value function below)
    lr_value: float = 7e-4  # Adam lr of the value function
    entropy_coef: float = 0.01  # entropy bonus
    epochs: int = 2  # PPO epochs per iteration (per env in the YAML)
    minibatch_size: int = 800  # timesteps per PPO step: iteration steps / published minibatches
    center_advantages: bool = True  # VariBAD standardises advantages
    max_grad_norm: float = 0.5  # PPO gradient clip
    trials_per_update: int = 16  # one trial per VariBAD process (16 processes)
    # the policy
    policy_hidden: tuple[int, ...] = (128, 128)  # tanh MLP of policy and value on (s, belief)
    init_std: float = 1.0  # initial action standard deviation
    normalize_observations: bool = True  # PPOConfig's switch, on: scale observations
    # PPO sees rewards / running std of the discounted return (published; the YAML sets it,
    # False here because a new key must default to the behaviour from before it existed)
    normalize_rewards: bool = False
    # the VAE
    latent_dim: int = 5  # task latent size (10 on ant-goal)
    encoder_gru: int = 128  # GRU units of the trajectory encoder
    state_embed: int = 32  # ReLU embedding sizes of the encoder's inputs: observation,
    action_embed: int = 16  # previous action,
    reward_embed: int = 16  # previous reward
    decoder_hidden: tuple[int, ...] = (64, 32)  # ReLU MLP of the reward decoder
    kl_weight: float = 0.1  # weight of KL(q_t || q_{t-1}) in the ELBO
    vae_lr: float = 1e-3  # Adam lr of encoder and decoder
    vae_buffer_trials: int = 200  # most recent trials kept for the VAE (saved in checkpoints)
    vae_batch_trials: int = 10  # trials per VAE step
    vae_updates: int = 3  # VAE steps per iteration
    vae_subsample_elbos: int = 50  # belief times per trial in a VAE step (0: all)
    vae_subsample_decodes: int = 0  # reconstructed steps per belief (0: all steps of the trial)

    def validate(self) -> None:
        super().validate()
        positive = ("latent_dim", "encoder_gru", "state_embed", "action_embed", "reward_embed",
                    "vae_lr", "vae_buffer_trials", "vae_batch_trials", "init_std")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("kl_weight", "vae_updates", "vae_subsample_elbos", "vae_subsample_decodes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        for name in ("policy_hidden", "decoder_hidden"):
            if any(size <= 0 for size in getattr(self, name)):
                raise ConfigError(f"{name} sizes must be positive, got {list(getattr(self, name))!r}")


class BeliefEncoder(nn.Module):
    """GRU over embedded (s_t, a_{t-1}, r_{t-1}, d_t) -> posterior (mu_t, log var_t)."""

    def __init__(self, obs_dim: int, act_dim: int, config: VariBADConfig):
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.embed_obs = nn.Sequential(nn.Linear(obs_dim, config.state_embed), nn.ReLU())
        self.embed_action = nn.Sequential(nn.Linear(act_dim, config.action_embed), nn.ReLU())
        self.embed_reward = nn.Sequential(nn.Linear(1, config.reward_embed), nn.ReLU())
        embed = config.state_embed + config.action_embed + config.reward_embed + 1
        self.gru = make_gru(embed, config.encoder_gru)
        self.head = nn.Linear(config.encoder_gru, 2 * config.latent_dim)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., obs+act+2] (observation already scaled) -> the GRU's input."""
        o, a = self.obs_dim, self.act_dim
        return torch.cat([self.embed_obs(x[..., :o]), self.embed_action(x[..., o:o + a]),
                          self.embed_reward(x[..., o + a:o + a + 1]), x[..., -1:]], -1)

    def belief(self, h: torch.Tensor) -> torch.Tensor:
        """[..., 2 * latent]: (mu, log var) read from GRU states; h = 0 gives the prior."""
        return self.head(h)

    def step(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return gru_step(self.gru, self.embed(x), h)

    def unroll(self, x: torch.Tensor) -> torch.Tensor:
        """GRU states [B, T, H] after each step of whole trials x [B, T, in], from h = 0."""
        with float32_cudnn(x.device):
            return self.gru(self.embed(x))[0]


class VariBADModel(nn.Module):
    """Encoder + reward decoder (the VAE) and the policy/value MLPs on (s, belief).

    ``forward`` takes {"x": [N, in], "state": [N, H]} while acting (one encoder step; the
    output carries the new state and, as its latent, the belief mean) or {"obs": [M, obs],
    "belief": [M, 2 * latent]} when learning (beliefs recorded by the encoder, detached).
    """

    def __init__(self, obs_dim: int, act_dim: int, config: VariBADConfig,
                 normalizer: RunningNormalizer | None = None):
        super().__init__()
        self.latent_dim = config.latent_dim
        self.state_size = config.encoder_gru  # the recurrent state carried while acting
        # one observation scaling for encoder, decoder and policy
        self.normalizer = normalizer
        self.encoder = BeliefEncoder(obs_dim, act_dim, config)
        # r_j from (m, s_j, a_j, s_{j+1})
        self.decoder = mlp([config.latent_dim + 2 * obs_dim + act_dim, *config.decoder_hidden, 1],
                           activation=nn.ReLU)
        in_dim = obs_dim + 2 * config.latent_dim
        self.policy = mlp([in_dim, *config.policy_hidden, act_dim], out_gain=0.01)
        self.value = mlp([in_dim, *config.policy_hidden, 1])
        self.log_std = nn.Parameter(torch.full((act_dim,), math.log(config.init_std)))

    def scale(self, x: torch.Tensor) -> torch.Tensor:
        """Observations, or working memories (observation first), with the observation scaled."""
        return scale_leading(self.normalizer, x)

    def forward(self, inputs: dict[str, torch.Tensor]) -> ModelOutput:
        h = None
        if "state" in inputs:  # acting: one encoder step for every trial
            x = inputs["x"]
            h = self.encoder.step(self.scale(x), inputs["state"])
            belief = self.encoder.belief(h)
            obs = x[:, :self.encoder.obs_dim]
        else:
            obs, belief = inputs["obs"], inputs["belief"]
        features = torch.cat([self.scale(obs), belief.detach()], -1)
        latent = None if h is None else belief[:, :self.latent_dim]  # the belief mean
        return ModelOutput(self.policy(features), self.value(features).squeeze(-1),
                           state=h, latent=latent)

    def beliefs(self, x: torch.Tensor) -> torch.Tensor:
        """Beliefs [B, T, 2 * latent] at every step of whole trials x [B, T, in] (raw obs)."""
        return self.encoder.belief(self.encoder.unroll(self.scale(x)))

    def policy_parameters(self):
        return [*self.policy.parameters(), self.log_std]

    def value_parameters(self):
        return list(self.value.parameters())

    def vae_parameters(self):
        return [*self.encoder.parameters(), *self.decoder.parameters()]


def elbo_loss(model: VariBADModel, trials: dict[str, torch.Tensor], config: VariBADConfig,
              generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
    """The negative ELBO of whole trials (see the module docstring), averaged over trials.

    ``trials``: "x" [B, T, in] working memories, "action" [B, T, act], "reward" [B, T],
    "next_obs" [B, T, obs], "valid" [B, T] (a prefix of each row). Belief times and decoded
    steps are subsampled uniformly among each trial's valid ones with ``generator``.
    """
    x, valid = trials["x"], trials["valid"]
    B, T = valid.shape
    device, L = x.device, config.latent_dim
    length = valid.sum(1)  # [B]
    h = model.encoder.unroll(model.scale(x))  # [B, T, H]
    h = torch.cat([torch.zeros_like(h[:, :1]), h], 1)  # index 0: the prior (h = 0)
    mu, logvar = model.encoder.belief(h).split(L, -1)  # [B, T + 1, L]

    # KL(q_t || q_{t-1}) for t = 0..T, with q_{-1} = N(0, I); belief t exists for t <= length
    prev_mu = torch.cat([torch.zeros_like(mu[:, :1]), mu[:, :-1]], 1)
    prev_logvar = torch.cat([torch.zeros_like(logvar[:, :1]), logvar[:, :-1]], 1)
    kl = gaussian_kl(mu, logvar, prev_mu, prev_logvar)  # [B, T + 1]

    def pick(n: int, count: torch.Tensor) -> torch.Tensor:
        """[B, n] uniform indices in [0, count_b) per row (with replacement)."""
        u = torch.rand(B, n, generator=generator).to(device)
        return (u * count[:, None]).long().clamp(max=count.max() - 1)

    beliefs_per_trial = length + 1
    if config.vae_subsample_elbos and config.vae_subsample_elbos < T + 1:
        times = pick(config.vae_subsample_elbos, beliefs_per_trial)  # [B, E]
        time_weight = torch.ones_like(times, dtype=x.dtype)
    else:
        times = torch.arange(T + 1, device=device).expand(B, T + 1)
        time_weight = (times < beliefs_per_trial[:, None]).to(x.dtype)
    row = torch.arange(B, device=device)[:, None]
    mu_t, logvar_t = mu[row, times], logvar[row, times]  # [B, E, L]
    noise = torch.randn(mu_t.shape, generator=generator).to(device)
    z = mu_t + (0.5 * logvar_t).exp() * noise  # reparameterised samples of m

    if config.vae_subsample_decodes and config.vae_subsample_decodes < T:
        steps = pick(config.vae_subsample_decodes, length)  # [B, D]
        step_weight = torch.ones_like(steps, dtype=x.dtype)
    else:
        steps = torch.arange(T, device=device).expand(B, T)
        step_weight = valid.to(x.dtype)
    o = model.encoder.obs_dim
    transition = torch.cat([model.scale(x[..., :o]), trials["action"],
                            model.scale(trials["next_obs"])], -1)[row, steps]  # [B, D, ...]
    E, D = times.shape[1], steps.shape[1]
    decoder_in = torch.cat([z[:, :, None].expand(B, E, D, L),
                            transition[:, None].expand(B, E, D, transition.shape[-1])], -1)
    predicted = model.decoder(decoder_in).squeeze(-1)  # [B, E, D]
    target = trials["reward"][row, steps]  # [B, D]
    squared_error = ((predicted - target[:, None]) ** 2 * step_weight[:, None]).sum(-1)  # [B, E]
    # per trial: the mean over belief times of (reconstruction of all steps + weighted KL)
    norm = time_weight.sum(1)
    reconstruction = (squared_error * time_weight).sum(1) / norm
    kl_term = (kl[row, times] * time_weight).sum(1) / norm
    loss = (reconstruction + config.kl_weight * kl_term).mean()
    stats = {"vae_loss": loss.item(), "vae_reconstruction": reconstruction.mean().item(),
             "vae_kl": kl_term.mean().item(),
             "vae_reward_rmse": math.sqrt(reconstruction.mean().item() / max(D, 1))}
    return loss, stats


def discounted_returns_so_far(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """[N, T] float64: sum_{k<=t} gamma^(t-k) r_k per trial, the running return whose std
    scales rewards (as VecNormalize)."""
    returns = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1]):
        running = running * gamma + rewards[:, t]
        returns[:, t] = running
    return returns


class TrialBuffer:
    """The ``capacity`` most recent trials as fixed [capacity, T, ...] tensors (a ring)."""

    KEYS = ("x", "action", "reward", "next_obs", "valid")

    def __init__(self, capacity: int):
        self.capacity, self.size, self.next = capacity, 0, 0
        self.data: dict[str, torch.Tensor] = {}

    def add(self, trials: dict[str, torch.Tensor]) -> None:
        n, T = trials["valid"].shape
        if self.data and self.data["valid"].shape[1] != T:  # e.g. a different horizon on resume
            self.data, self.size, self.next = {}, 0, 0
        if not self.data:
            self.data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=v.device)
                         for k, v in trials.items()}
        for i in range(n):
            for key in self.KEYS:
                self.data[key][self.next] = trials[key][i]
            self.next = (self.next + 1) % self.capacity
            self.size = min(self.size + 1, self.capacity)

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (n,), generator=generator).to(self.data["valid"].device)
        return {k: v[idx] for k, v in self.data.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "next": self.next,
                "data": {k: v[:self.size].cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.data, self.size, self.next = {}, 0, 0
        if state["size"]:
            saved = {k: v.to(device) for k, v in state["data"].items()}
            self.data = {k: torch.zeros((self.capacity, *v.shape[1:]), dtype=v.dtype, device=device)
                         for k, v in saved.items()}
            keep = min(state["size"], self.capacity)
            for k, v in saved.items():
                self.data[k][:keep] = v[:keep]
            self.size, self.next = keep, state["next"] % self.capacity


class VariBADAgent(RecurrentPPOAgent):
    """VariBAD: a VAE belief over the task (GRU encoder, reward decoder) + PPO on (s, belief)."""

    name = "varibad"
    defaults = "trmrl.configs:varibad.yaml"
    config_class = VariBADConfig
    config: VariBADConfig

    def __init__(self, config: VariBADConfig, suite, device, seed, settings=None):
        super().__init__(config, suite, device, seed, settings)
        self.vae_optimizer = torch.optim.Adam(self.model.vae_parameters(), lr=config.vae_lr)
        self.buffer = TrialBuffer(config.vae_buffer_trials)
        # running variance of the discounted return, for reward scaling (as VecNormalize)
        self.return_stats = RunningNormalizer(1).to(device)

    def build_model(self):
        return VariBADModel(self.suite.observation_dim, self.suite.action_dim, self.config,
                            self.obs_normalizer)

    # acting: RecurrentPPOAgent carries the encoder's GRU state of every trial

    # -- learning -----------------------------------------------------------------------------
    def trials(self, batch: TrialBatch) -> dict[str, torch.Tensor]:
        arrays = {"x": batch.augmented_inputs(), "action": batch.action, "reward": batch.reward,
                  "next_obs": batch.next_obs, "valid": batch.valid}
        return {k: to_device(v, self.device) for k, v in arrays.items()}

    def batch_inputs(self, batch: TrialBatch):
        # the beliefs the encoder gave while acting: it has not changed since (VAE steps
        # come after PPO), so the PPO ratio starts at 1
        with torch.no_grad():
            belief = self.model.beliefs(to_device(batch.augmented_inputs(), self.device))
        return {"obs": to_device(batch.obs, self.device), "belief": belief}

    def scaled_rewards(self, batch: TrialBatch) -> np.ndarray:
        """Rewards for PPO: divided by the running std of the discounted return (the VAE
        keeps the raw ones). Statistics move after the update, as the observation scaling."""
        scale = float(self.return_stats.var.sqrt().clamp(min=1e-4))
        return np.clip(batch.reward / scale, -10, 10).astype(np.float32)

    def update(self, batch: TrialBatch) -> dict[str, float]:
        if self.config.normalize_rewards:
            metrics = self.update_ppo(dataclasses.replace(batch, reward=self.scaled_rewards(batch)))
            returns = discounted_returns_so_far(batch.reward, self.config.gamma)[batch.valid]
            self.return_stats.update(to_device(returns[:, None], self.device))
        else:
            metrics = self.update_ppo(batch)
        self.buffer.add(self.trials(batch))
        for _ in range(self.config.vae_updates):
            loss, vae_stats = elbo_loss(self.model, self.buffer.sample(self.config.vae_batch_trials,
                                                                       self.generator),
                                        self.config, self.generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite VAE loss: {vae_stats}")
            self.vae_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.vae_optimizer.step()
        # no stale VAE gradients for PPO's next gradient-norm clip (it clips all parameters)
        self.vae_optimizer.zero_grad(set_to_none=True)
        if self.config.vae_updates:
            metrics.update(vae_stats)
        self.update_observation_statistics(batch)  # last: acting and learning scale alike
        return metrics

    # -- checkpoints: PPO's state plus the VAE optimiser and buffer ----------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "vae_optimizer": self.vae_optimizer.state_dict(),
                "vae_buffer": self.buffer.state_dict(), "return_stats": self.return_stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.vae_optimizer.load_state_dict(state["vae_optimizer"])
        self.buffer.load_state_dict(state["vae_buffer"], self.device)
        if "return_stats" in state:  # absent in checkpoints of runs before normalize_rewards
            self.return_stats.load_state_dict(state["return_stats"])
