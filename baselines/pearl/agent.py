"""PEARL: off-policy meta-RL with probabilistic context variables (Rakelly et al. 2019).

A context encoder reads single transitions c = (s, a, r) (and s' where the dynamics differ
between tasks) and gives each a Gaussian factor N(mu(c), sigma^2(c)); the posterior over the
task latent z is their normalised product, q(z | c_1..n) ∝ prod_i N(mu_i, sigma_i^2), so it
does not depend on the order of the transitions and sharpens as they come in. SAC learns on
states augmented with z: a tanh-Gaussian policy pi(a | s, z), twin Q(s, a, z), a value
V(s, z) and its soft-updated target. One gradient step, for a meta-batch of training tasks:

    z ~ q(z | c_task), c_task = a context batch from the task's encoder buffer (reparameterised)
    Q loss   = sum_j mean (Q_j(s, a, z) - (reward_scale r + (1 - terminated) gamma V'(s', z)))^2
    KL term  = kl_weight * sum_tasks KL(q(z | c) || N(0, I))
    -> Adam on Q_1, Q_2 and the encoder (the only losses that reach the encoder)
    V loss   = mean (V(s, z) - [min_j Q_j(s, a~pi, z) - log pi(a | s, z)])^2   (Q after its step)
    pi loss  = mean (log pi(a | s, z) - min_j Q_j(s, a, z)) + 1e-3 mean mu^2 + 1e-3 mean log_std^2
    -> Adam on V and the policy; V' <- (1 - tau) V' + tau V
    (z detached in the V, target and policy terms)

Data: a fixed pool of training tasks (``num_train_tasks`` of ``suite.tasks("train", seed)``;
on Meta-World spread over the classes; tasks with equal parameters, e.g. the two directions of
cheetah-dir drawn again and again, are one task), each with a replay buffer for SAC and an
encoder buffer for contexts. At the first iteration every pool task gets
``num_initial_steps`` with z from the prior (into both buffers). Every iteration then draws
``trials_per_update`` pool tasks (PEARL's num_tasks_sample) and, for each, empties its encoder
buffer, collects ``num_steps_prior`` steps with z ~ N(0, I) resampled per episode (into both
buffers), then ``num_extra_rl_steps_posterior`` steps with z ~ q(z | c) for a context batch
of that fresh prior data, re-inferred at every episode (into the replay buffer only), and
finally takes ``num_train_steps_per_itr`` gradient steps. ``train_iteration`` therefore
ignores the tasks the trainer draws from the task distribution (their number too): PEARL's
buffers belong to a fixed pool. Its own samplers (seeded from the trainer's, with their own
call counters) run whole episodes: a step count becomes ceil(steps / horizon) episodes.

Acting (evaluation, the adaptation protocol): the first ``exploration_episodes`` of a trial
run z from the prior (drawn again per episode); at the start of every later episode z is
sampled from the posterior given all of the trial's transitions so far (posterior sampling
is PEARL's exploration). Deterministic actions are the tanh of the policy mean; z is still
sampled, from a generator re-seeded by ``reset``. The published evaluation (oyster's
``collect_paths`` with num_exp_traj_eval 2 in every MuJoCo config) runs 3 episodes, 2 with
prior z, and reports the return of the third; ``exploration_episodes`` 2 gives that
protocol, whose number is then episode index 2 of our trials (docs/agents/pearl.md).

On a GPU (``cuda_graphs``) one whole gradient step (gathering the batch from the
device-resident buffers, encoder, product of Gaussians, every loss, backward, both Adam steps
with capturable fused Adam, the target update) is one CUDA graph (:mod:`trmrl.accel`'s
``GraphedLoop``, chosen once when the agent is built), replayed
``num_train_steps_per_itr`` times per iteration. The iteration's batch indices are drawn in
one go on the CPU (seeded), moved to the device once, and copied into the graph's static
index buffers before each replay. The replay storage grows by doubling; the graph is
captured again whenever the storage moved (a handful of times per run). Eager steps on a GPU
use the same fused Adam, so from the same state and CUDA generator they give what the graph
gives. Also for speed on a GPU: matrix products in TF32 (``tf32``), network inputs padded
to a multiple of 4 floats (zero columns, zero weights) so that tensor cores apply, bias
gradients as matrix-vector products, and acting with a CPU copy of the policy. The CPU path
is the same algorithm, eager, in float32.

Deviations from the published code (rlkit-based "oyster"), all ours:
- The first episode of the posterior phase uses a posterior z too (oyster's loop starts that
  phase with a prior z); z is re-inferred from a fresh context batch every episode, as
  oyster's update_post_train = 1 does.
- Collection counts whole episodes (an early termination ends an episode short; oyster keeps
  collecting until the step count is reached).
- All drawn tasks are collected side by side: a task drawn twice in one iteration keeps the
  prior data of its last draw in its encoder buffer (as oyster's sequential loop leaves it),
  but both posterior trials sample context after all prior trials were collected.
- log pi uses the exact log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)) instead of
  log(1 - tanh(u)^2 + 1e-6).
- With ``use_next_obs_in_context``, acting drops the last transition of each episode from the
  trial's context (the agent never sees its s', only the next episode's first state).
- Weight initialisation bounds use each layer's fan-in (rlkit's fanin_init takes the weight's
  first dimension, the output size); TF32 matrix products on a GPU (``tf32``).
- The training-task pool is saved in checkpoints (it depends on the seed) and restored.
Defaults and their sources: ``trmrl/configs/pearl.yaml``. The networks and their math are
in :mod:`baselines.pearl.networks`, the buffers in :mod:`baselines.pearl.buffers`.
"""


from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from baselines.pearl.buffers import ContextStore, ReplayStore
from baselines.pearl.networks import (PEARLNetworks, kl_to_standard_normal, tanh_gaussian_log_prob)
from trmrl.accel import (EagerLoop, GraphedLoop, OptimizerPlacement, StepNoise, acting_module, tensor_core_width,
                         tf32, uses_cuda_graphs)
from trmrl.agents.base import Agent, IterationResult
from trmrl.envs import Task
from trmrl.errors import ConfigError
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch, TrialSampler
from trmrl.settings import AgentConfig, TrainerSettings

log = logging.getLogger("trmrl.pearl")

MASK62 = (1 << 62) - 1  # raw 64-bit draws -> non-negative int64 before a modulo
# metrics of the gradient steps, averaged over an iteration (order of the stats vector)
STEP_STATS = ("q_loss", "v_loss", "policy_loss", "kl", "posterior_std", "posterior_mean_abs",
              "entropy", "q_mean", "v_mean")


@dataclass
class PEARLSettings(TrainerSettings):
    steps: int = 1_000_000  # env-step budget (as trmrl/configs/pearl.yaml's MuJoCo default)
    cuda_graphs: bool = True  # on a GPU, replay the whole gradient step from a CUDA graph


@dataclass
class PEARLConfig(AgentConfig):
    # `trmrl train` takes per-env defaults from trmrl/configs/pearl.yaml; these are the values
    # of a bare PEARLConfig() (PEARL's cheetah-vel settings).
    eval_every: int = 50_000  # env steps between test evaluations
    trials_per_update: int = 5  # pool tasks collected per iteration (PEARL's num_tasks_sample)
    num_train_tasks: int | None = 100  # size of the fixed training-task pool (None: the split)
    # networks
    hidden: tuple[int, ...] = (300, 300, 300)  # ReLU MLPs of policy, Q_1, Q_2 and V
    encoder_hidden: tuple[int, ...] = (200, 200, 200)  # ReLU MLP of the context encoder
    latent_dim: int = 5  # size of z
    use_next_obs_in_context: bool = False  # context transitions (s, a, r, s') instead of (s, a, r)
    # SAC
    reward_scale: float = 5.0  # reward factor in the Q target (sets the entropy's weight)
    gamma: float = 0.99  # discount
    tau: float = 0.005  # soft target update of V
    lr_policy: float = 3e-4  # Adam lr of the policy
    lr_q: float = 3e-4  # Adam lr of Q_1 and Q_2
    lr_v: float = 3e-4  # Adam lr of V
    lr_encoder: float = 3e-4  # Adam lr of the context encoder
    kl_weight: float = 0.1  # weight of KL(q(z | c) || N(0, I)), summed over the meta-batch
    policy_mean_reg: float = 1e-3  # weight of mean(mu^2) in the policy loss
    policy_std_reg: float = 1e-3  # weight of mean(log_std^2) in the policy loss
    # data collection (steps are rounded up to whole episodes)
    num_initial_steps: int = 2000  # steps per pool task at the first iteration, z ~ prior
    num_steps_prior: int = 400  # steps per drawn task with z ~ prior (both buffers)
    num_extra_rl_steps_posterior: int = 600  # then steps with z ~ posterior (replay buffer only)
    replay_capacity: int = 1_000_000  # transitions kept per task (oldest dropped first)
    # gradient steps
    num_train_steps_per_itr: int = 2000  # gradient steps per iteration
    meta_batch: int = 16  # tasks per gradient step (drawn with replacement from the pool)
    batch_size: int = 256  # SAC transitions per task per gradient step
    context_batch_size: int = 100  # context transitions per task per gradient step
    # on a GPU, the gradient step's matrix products in TF32 (tensor cores); a hyperparameter,
    # not a trainer setting: it changes the numbers the updates compute, so a resume keeps it
    tf32: bool = True
    # evaluation trials: leading episodes with z from the prior before the posterior takes over;
    # oyster's num_exp_traj_eval is 2, ours 1 so that the suites' 2-episode test trials
    # (progress.csv) hold a posterior episode
    exploration_episodes: int = 1

    def validate(self) -> None:
        super().validate()
        if self.exploration_episodes < 1:
            raise ConfigError("exploration_episodes must be a positive integer, "
                              f"got {self.exploration_episodes!r}")
        positive = ("latent_dim", "reward_scale", "lr_policy", "lr_q", "lr_v", "lr_encoder",
                    "num_initial_steps", "num_steps_prior", "replay_capacity",
                    "num_train_steps_per_itr", "meta_batch", "batch_size", "context_batch_size")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("kl_weight", "policy_mean_reg", "policy_std_reg",
                     "num_extra_rl_steps_posterior"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        if not 0 <= self.gamma <= 1:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau!r}")
        if self.num_train_tasks is not None and self.num_train_tasks <= 0:
            raise ConfigError("num_train_tasks must be positive or null, got "
                              f"{self.num_train_tasks!r}")
        for name in ("hidden", "encoder_hidden"):
            if any(size <= 0 for size in getattr(self, name)):
                raise ConfigError(f"{name} sizes must be positive, "
                                  f"got {list(getattr(self, name))!r}")


class _TrialContext:
    """What ``act`` remembers of the current trials: their transitions so far and their z."""

    def __init__(self, n: int, obs_dim: int, latent_dim: int):
        self.transitions: list[np.ndarray] = []  # per step: [n, context_dim]
        self.masks: list[np.ndarray] = []  # per step: [n] bool, the rows whose transition it is
        self.prev_obs = np.zeros((n, obs_dim), np.float32)
        self.has_prev = np.zeros(n, bool)  # the row took a step already
        self.episodes_started = np.zeros(n, np.int64)  # per row, episodes begun so far
        self.z = torch.zeros(n, latent_dim)


class _CollectionPolicy:
    """Acts in the agent's own collection trials (row i on pool task ``tasks[i]``): z from the
    prior at every episode start, or (``posterior``) from q(z | c) with c a fresh context
    batch from the row's task's encoder buffer. Actions are sampled."""

    def __init__(self, agent: PEARLAgent, tasks: np.ndarray, posterior: bool):
        self.agent, self.tasks, self.posterior = agent, tasks, posterior
        self.z = torch.zeros(len(tasks), agent.config.latent_dim)

    def reset(self, num_trials: int) -> None:
        assert num_trials == len(self.tasks)

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        agent = self.agent
        rows = np.flatnonzero(step.episode_start & step.active)
        if len(rows):
            if self.posterior:
                context = torch.stack([agent.contexts.sample(int(self.tasks[r]),
                                                             agent.config.context_batch_size,
                                                             agent.rng) for r in rows])
                with torch.no_grad():
                    mu, var = agent.nets.posterior(context)
                self.z[rows] = agent.sample_z(mu.cpu(), var.cpu(), agent.generator)
            else:
                self.z[rows] = agent.sample_z(torch.zeros(len(rows), agent.config.latent_dim),
                                              torch.ones(len(rows), agent.config.latent_dim),
                                              agent.generator)
        return PolicyOutput(agent.policy_action(step.obs, self.z, False, agent.generator))


class PEARLAgent(Agent):
    """PEARL: SAC on (s, z) with z inferred from context by a product-of-Gaussians encoder."""

    name = "pearl"
    defaults = "trmrl.configs:pearl.yaml"
    collects_trainer_trials = False  # prior/posterior phases and the initial collection on its own samplers
    config_class = PEARLConfig
    config: PEARLConfig
    settings_class = PEARLSettings
    settings: PEARLSettings

    def __init__(self, config: PEARLConfig, suite, device, seed,
                 settings: PEARLSettings | None = None):
        super().__init__(config, suite, device, seed, settings)
        o, a = suite.observation_dim, suite.action_dim
        self.obs_dim, self.act_dim = o, a
        self.context_dim = o + a + 1 + (o if config.use_next_obs_in_context else 0)
        self.context_width = tensor_core_width(self.context_dim)  # stored with zero columns (see MLP)
        self.horizon = config.horizon or suite.horizon
        self.train_tasks = self.task_pool()
        self.nets = PEARLNetworks(o, a, self.context_width, config,
                                  torch.Generator().manual_seed(seed))
        self.nets.to(device)
        # eager or accelerated steps (trmrl.accel): chosen here, once
        self.graphed = uses_cuda_graphs(device, self.settings.cuda_graphs)
        # a few rows per acting step cost less on the CPU than a GPU round trip: a policy that
        # learns on a GPU acts through a CPU copy, refreshed after every update
        self.acting_policy = acting_module(self.nets.policy, device)
        # fused Adam on any GPU (graphed or not the same kernel); a graph needs its state there
        self.optimizer_placement = OptimizerPlacement(device, fused=device.type == "cuda",
                                                      capturable=self.graphed)
        nets = self.nets
        # Adam per network (param groups); two optimisers because the Q/encoder step comes
        # before the V/policy losses are formed
        self.critic_optimizer = self._adam([(nets.q1, config.lr_q), (nets.q2, config.lr_q),
                                            (nets.encoder, config.lr_encoder)])
        self.actor_optimizer = self._adam([(nets.v, config.lr_v), (nets.policy, config.lr_policy)])
        # CPU generators: action and z noise while acting, gradient-step noise on the CPU;
        # task draws, context draws and batch indices
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(np.random.SeedSequence([seed, 0x9EA21]))
        self.eval_seed = seed  # deterministic trials draw z from a generator seeded with this
        self.step_noise = StepNoise(device, self.generator, seed)  # gradient-step noise
        # buffers
        T, H = len(self.train_tasks), self.horizon
        self.initial_episodes = self.episodes(config.num_initial_steps)
        self.prior_episodes = self.episodes(config.num_steps_prior)
        self.posterior_episodes = self.episodes(config.num_extra_rl_steps_posterior)
        self.replay = ReplayStore(T, 2 * o + a + 2, config.replay_capacity, device)
        self.contexts = ContextStore(T, self.context_width,
                                     max(self.initial_episodes, self.prior_episodes) * H, device)
        self.initial_done = False
        self.iteration = 0
        self.calls = {"initial": 0, "prior": 0, "posterior": 0}  # sampler calls: reset seeds
        self._samplers: dict[str, TrialSampler] = {}
        self._trial: _TrialContext | None = None
        self._eval_generator = torch.Generator()
        self._stats = torch.zeros(len(STEP_STATS), device=device)
        # gradient steps op by op, or one CUDA graph replayed per step (captured again when
        # the replay storage grew and moved, or after a load)
        if self.graphed:
            self.run_steps = GraphedLoop(self.gradient_step, device, self.zero_grad,
                                         restore=self.step_state, key=self.storage_key,
                                         optimizers=(self.critic_optimizer, self.actor_optimizer))
        else:
            self.run_steps = EagerLoop(self.gradient_step, self.zero_grad)

    # -- setup ----------------------------------------------------------------------------
    def task_pool(self) -> list[Task]:
        """The fixed training tasks, without repeats (equal parameters are one task)."""
        n = self.config.num_train_tasks
        tasks = (self.suite.tasks("train", self.seed) if n is None
                 else self.suite.eval_tasks("train", self.seed, n))
        unique: dict[str, Task] = {}
        for task in tasks:
            unique.setdefault(repr(sorted(task.params.items())), task)
        return list(unique.values())

    def episodes(self, steps: int) -> int:
        """Whole episodes for a step count (at least one for a positive count)."""
        return -(-steps // self.horizon)

    def _adam(self, groups: list[tuple[nn.Module, float]]) -> torch.optim.Adam:
        """Adam over several networks: one param group per learning rate (Adam is per
        parameter, so this is one Adam per network; fewer groups, fewer fused kernels)."""
        by_lr: dict[float, list[nn.Parameter]] = {}
        for module, lr in groups:
            by_lr.setdefault(lr, []).extend(module.parameters())
        params = [{"params": p, "lr": lr} for lr, p in by_lr.items()]
        placement = self.optimizer_placement
        return placement.place(torch.optim.Adam(params, **placement.options()))

    # -- acting ---------------------------------------------------------------------------
    def sample_z(self, mu: torch.Tensor, var: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """z ~ N(mu, var) on the CPU, [k, L]."""
        return mu + var.sqrt() * torch.randn(mu.shape, generator=generator)

    @torch.no_grad()
    def policy_action(self, obs: np.ndarray, z: torch.Tensor, deterministic: bool,
                      generator: torch.Generator) -> np.ndarray:
        """tanh(mean) or a tanh-Gaussian sample for (s, z) on the CPU (``acting_policy``);
        noise from ``generator``."""
        inputs = [torch.from_numpy(np.asarray(obs, np.float32)), z]
        mean, log_std = self.nets.policy_head(inputs, self.acting_policy())
        if not deterministic:
            mean = mean + log_std.exp() * torch.randn(mean.shape, generator=generator)
        return torch.tanh(mean).numpy()

    def reset(self, num_trials: int) -> None:
        self._trial = _TrialContext(num_trials, self.obs_dim, self.config.latent_dim)
        self._eval_generator.manual_seed(self.eval_seed)

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        trial = self._trial
        if trial is None or len(trial.has_prev) != len(step.obs):
            self.reset(len(step.obs))
            trial = self._trial
        generator = self._eval_generator if deterministic else self.generator
        active = np.asarray(step.active, bool)
        start = np.asarray(step.episode_start, bool)
        # the transition (s_{t-1}, a_{t-1}, r_{t-1}[, s_t]) is complete now
        recorded = active & trial.has_prev
        parts = [trial.prev_obs, step.prev_action, step.prev_reward[:, None]]
        if self.config.use_next_obs_in_context:  # s_t is a reset state at an episode start
            recorded &= ~start
            parts.append(step.obs)
        parts.append(np.zeros((len(step.obs), self.context_width - self.context_dim), np.float32))
        if recorded.any():
            trial.transitions.append(np.concatenate(parts, -1, dtype=np.float32))
            trial.masks.append(recorded)
        starting = np.flatnonzero(start & active)
        if len(starting):
            L = self.config.latent_dim
            mu, var = torch.zeros(len(starting), L), torch.ones(len(starting), L)  # the prior
            exploring = trial.episodes_started[starting] < self.config.exploration_episodes
            trial.episodes_started[starting] += 1
            if trial.transitions:
                mask = np.stack([m[starting] for m in trial.masks], 1)  # [k, steps]
                seen = mask.any(1) & ~exploring
                if seen.any():
                    rows = starting[seen]
                    context = np.stack([c[rows] for c in trial.transitions], 1)
                    with torch.no_grad():
                        post_mu, post_var = self.nets.posterior(
                            torch.from_numpy(context).to(self.device),
                            torch.from_numpy(mask[seen]).to(self.device))
                    mu[seen], var[seen] = post_mu.cpu(), post_var.cpu()
            trial.z[starting] = self.sample_z(mu, var, generator)
        trial.prev_obs[active] = step.obs[active]
        trial.has_prev |= active
        action = self.policy_action(step.obs, trial.z, deterministic, generator)
        extras = {"memory": trial.z.numpy().copy()} if self.record_memory else {}
        return PolicyOutput(action, extras)

    # -- collection -----------------------------------------------------------------------
    def _sampler(self, kind: str, base_seed: int, num_envs: int, episodes: int) -> TrialSampler:
        if kind not in self._samplers:
            offset = {"prior": 1, "posterior": 2, "initial": 3}[kind]
            self._samplers[kind] = TrialSampler(
                self.suite, num_envs, horizon=self.horizon, episodes_per_trial=episodes,
                num_workers=min(self.settings.num_workers, num_envs), seed=base_seed + offset)
        return self._samplers[kind]

    def _collect(self, kind: str, sampler: TrialSampler, tasks: np.ndarray,
                 posterior: bool) -> TrialBatch:
        policy = _CollectionPolicy(self, tasks, posterior)
        batch = sampler.run(policy, [self.train_tasks[t] for t in tasks], call=self.calls[kind])
        self.calls[kind] += 1
        return batch

    def _store(self, batch: TrialBatch, tasks: np.ndarray) -> dict[int, torch.Tensor]:
        """Add each trial's valid steps to its task's replay buffer; returns the context rows
        (s, a, r[, s']) of each trial, keyed by task (a later trial of a task replaces one)."""
        contexts = {}
        for row, task in enumerate(tasks):
            valid = batch.valid[row]
            obs, action = batch.obs[row][valid], batch.action[row][valid]
            next_obs = batch.next_obs[row][valid]
            reward = batch.reward[row][valid][:, None]
            terminated = batch.terminated[row][valid][:, None].astype(np.float32)
            packed = np.concatenate([obs, action, reward, terminated, next_obs], -1,
                                    dtype=np.float32)
            self.replay.add(int(task), torch.from_numpy(packed))
            parts = [obs, action, reward]
            if self.config.use_next_obs_in_context:
                parts.append(next_obs)
            parts.append(np.zeros((len(obs), self.context_width - self.context_dim), np.float32))
            contexts[int(task)] = torch.from_numpy(np.concatenate(parts, -1, dtype=np.float32))
        return contexts

    def _collect_initial(self, base_seed: int) -> int:
        """num_initial_steps with z ~ prior on every pool task, into both buffers."""
        T = len(self.train_tasks)
        chunk = min(T, 25)
        sampler = self._sampler("initial", base_seed, chunk, self.initial_episodes)
        steps = 0
        for lo in range(0, T, chunk):
            tasks = np.arange(lo, min(lo + chunk, T))
            batch = self._collect("initial", sampler, tasks, posterior=False)
            for task, context in self._store(batch, tasks).items():
                self.contexts.clear(task)
                self.contexts.add(task, context)
            steps += batch.env_steps
        log.info("PEARL: initial data, %d steps on %d training tasks", steps, T)
        sampler.close()
        del self._samplers["initial"]
        return steps

    # -- learning -------------------------------------------------------------------------
    def train_iteration(self, sampler: TrialSampler, tasks: list[Task]) -> IterationResult:
        """Collect on pool tasks (``tasks``, drawn by the trainer, are ignored: see the
        module docstring) and take ``num_train_steps_per_itr`` gradient steps."""
        config = self.config
        env_steps = 0
        if not self.initial_done:
            env_steps += self._collect_initial(sampler.seed)
            self.initial_done = True
        drawn = self.rng.integers(0, len(self.train_tasks), config.trials_per_update)
        n = len(drawn)
        prior = self._collect("prior", self._sampler("prior", sampler.seed, n, self.prior_episodes),
                              drawn, posterior=False)
        for task, context in self._store(prior, drawn).items():
            self.contexts.clear(task)
            self.contexts.add(task, context)
        batches = [prior]
        if self.posterior_episodes:
            posterior_sampler = self._sampler("posterior", sampler.seed, n, self.posterior_episodes)
            batches.append(self._collect("posterior", posterior_sampler, drawn, posterior=True))
            self._store(batches[-1], drawn)
        env_steps += sum(b.env_steps for b in batches)
        returns = np.concatenate([b.episode_return for b in batches], 1)
        success = np.concatenate([b.episode_success for b in batches], 1)
        metrics = self.update(config.num_train_steps_per_itr)
        metrics["prior_return"] = float(prior.episode_return.mean())
        metrics["posterior_return"] = float(batches[-1].episode_return.mean())
        metrics["replay_transitions"] = float(self.replay.length.sum())
        self.iteration += 1
        return IterationResult(env_steps, returns, success, metrics)

    def draw_indices(self, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pool tasks [steps, meta_batch], rows of the replay data [steps, meta_batch *
        batch_size] and of the context data [steps, meta_batch * context_batch_size] of
        ``steps`` gradient steps, on the device (slot b's rows are b * size .. (b + 1) * size).

        One block of raw 64-bit draws from ``self.rng`` per iteration: tasks (with
        replacement), then uniform transitions of each task, as integers modulo the sizes.
        """
        c = self.config
        B, N, C, T = c.meta_batch, c.batch_size, c.context_batch_size, len(self.train_tasks)
        raw = self.rng.bit_generator.random_raw(steps * B * (1 + N + C)).view(np.int64)
        raw = torch.from_numpy(raw).to(self.device) & MASK62
        tasks = (raw[:steps * B] % T).view(steps, B)
        rl_raw = raw[steps * B:steps * B * (1 + N)].view(steps, B, N)
        ctx_raw = raw[steps * B * (1 + N):].view(steps, B, C)
        flat, offsets, lengths = self.replay.table()
        rl_rows = flat[offsets[tasks].unsqueeze(-1) + rl_raw % lengths[tasks].unsqueeze(-1)]
        sizes = torch.from_numpy(self.contexts.size.copy()).to(self.device)
        ctx_rows = (tasks.unsqueeze(-1) * self.contexts.capacity
                    + ctx_raw % sizes[tasks].unsqueeze(-1))
        return tasks, rl_rows.view(steps, B * N), ctx_rows.view(steps, B * C)

    def gradient_step(self, rl_rows: torch.Tensor, ctx_rows: torch.Tensor) -> None:
        """One PEARL step (see the module docstring); adds its statistics to ``_stats``.

        Leaves gradients in place: the eager loop zeroes them first, a CUDA graph writes
        fresh ones on every replay. No host synchronisation (it is captured as it is)."""
        c, nets = self.config, self.nets
        o, a, L = self.obs_dim, self.act_dim, c.latent_dim
        B, N = c.meta_batch, c.batch_size
        batch = self.replay.data[rl_rows]  # [B*N, width]
        obs, action = batch[:, :o], batch[:, o:o + a]
        reward, terminated, next_obs = batch[:, o + a], batch[:, o + a + 1], batch[:, o + a + 2:]
        context = self.contexts.data[ctx_rows].view(B, c.context_batch_size, self.context_width)
        mu, var = nets.posterior(context)  # [B, L]
        z = mu + var.sqrt() * self.step_noise(B, L)
        z = z.unsqueeze(1).expand(B, N, L).reshape(B * N, L)  # row i of the batch: task i // N
        z_free = z.detach()
        mean, log_std = nets.policy_head([obs, z_free])
        eps = self.step_noise(B * N, a)
        pre_tanh = mean + log_std.exp() * eps
        new_action = torch.tanh(pre_tanh)
        log_pi = tanh_gaussian_log_prob(eps, log_std, pre_tanh)
        obs_action_z = nets.q1.join([obs, action, z])
        q1 = nets.q1(obs_action_z).squeeze(-1)  # the encoder learns from these
        q2 = nets.q2(obs_action_z).squeeze(-1)
        v = nets.v([obs, z_free]).squeeze(-1)
        with torch.no_grad():
            target_v = nets.v_target([next_obs, z_free]).squeeze(-1)
            q_target = c.reward_scale * reward + (1.0 - terminated) * c.gamma * target_v
        kl = kl_to_standard_normal(mu, var).sum()
        q_loss = (q1 - q_target).pow(2).mean() + (q2 - q_target).pow(2).mean()
        (c.kl_weight * kl + q_loss).backward()
        self.critic_optimizer.step()
        # the updated Q functions, evaluated (not trained) at the policy's actions
        new_obs_action = nets.q1.join([obs, new_action, z_free])
        min_q = torch.min(nets.q1(new_obs_action, frozen=True),
                          nets.q2(new_obs_action, frozen=True)).squeeze(-1)
        v_loss = (v - (min_q - log_pi).detach()).pow(2).mean()
        policy_loss = ((log_pi - min_q).mean() + c.policy_mean_reg * mean.pow(2).mean()
                       + c.policy_std_reg * log_std.pow(2).mean())
        (v_loss + policy_loss).backward()
        self.actor_optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(nets.v_target.parameters()), list(nets.v.parameters()), c.tau)
            self._stats.add_(torch.stack([
                q_loss, v_loss, policy_loss, kl / B, var.sqrt().mean(), mu.abs().mean(),
                -log_pi.mean(), q1.mean(), v.mean()]).detach())

    def zero_grad(self) -> None:
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.actor_optimizer.zero_grad(set_to_none=True)

    def update(self, steps: int) -> dict[str, float]:
        """``steps`` gradient steps on batches from the buffers; mean statistics."""
        _, rl_rows, ctx_rows = self.draw_indices(steps)
        self._stats.zero_()
        self.acting_policy.mark_stale()  # the policy changes
        with tf32(self.device, matmul=self.config.tf32):  # on a GPU (a graph keeps its kernels)
            self.run_steps(rl_rows, ctx_rows)
        metrics = dict(zip(STEP_STATS, (self._stats / steps).tolist()))
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite PEARL losses: {metrics}")
        return metrics

    def step_state(self) -> list[torch.Tensor]:
        """What a gradient step changes besides the optimisers: every network (v_target's
        included) and the statistics (put back after a graph's warm-up steps)."""
        return [*self.nets.parameters(), self._stats]

    def storage_key(self) -> tuple[int, int]:
        """The buffers' storage addresses, which a captured step reads."""
        return self.replay.data.data_ptr(), self.contexts.data.data_ptr()

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"networks": self.nets.state_dict(),
                 "critic_optimizer": self.critic_optimizer.state_dict(),
                 "actor_optimizer": self.actor_optimizer.state_dict(),
                 "replay": self.replay.state_dict(), "contexts": self.contexts.state_dict(),
                 "pool": [task.to_json() for task in self.train_tasks],
                 "initial_done": self.initial_done, "iteration": self.iteration,
                 "calls": dict(self.calls), "generator": self.generator.get_state(),
                 "rng": self.rng.bit_generator.state, "eval_seed": self.eval_seed}
        device_rng = self.step_noise.device_state()
        if device_rng is not None:
            state["cuda_rng"] = device_rng
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pool = [Task(t["env"], t["split"], t["index"], t["params"], t["label"], t["value"])
                for t in state["pool"]]
        if any(task.env != self.suite.name for task in pool):
            raise ValueError(f"the checkpoint's training tasks are not {self.suite.name!r} tasks")
        if len(pool) != len(self.train_tasks):  # buffers are per pool task
            self.replay = ReplayStore(len(pool), self.replay.width, self.replay.capacity,
                                      self.device)
            self.contexts = ContextStore(len(pool), self.context_width, self.contexts.capacity,
                                         self.device)
        self.train_tasks = pool  # the pool is part of the state (it depends on the seed)
        self.nets.load_state_dict(state["networks"])
        for optimizer, key in ((self.critic_optimizer, "critic_optimizer"),
                               (self.actor_optimizer, "actor_optimizer")):
            # a copy: loading keeps tensors already on the right device, which would share
            # the moments with the agent the state came from
            optimizer.load_state_dict(copy.deepcopy(state[key]))
            # a checkpoint may come from the other path (GPU graphs <-> eager): match this one
            self.optimizer_placement.place(optimizer)
        self.replay.load_state_dict(state["replay"])
        self.contexts.load_state_dict(state["contexts"])
        self.initial_done, self.iteration = state["initial_done"], state["iteration"]
        self.calls = dict(state["calls"])
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.eval_seed = state["eval_seed"]
        self.step_noise.set_device_state(state.get("cuda_rng"))
        self.run_steps.reset()  # the optimiser state is new: capture again
        self.acting_policy.mark_stale()

    def close(self) -> None:
        for sampler in self._samplers.values():
            sampler.close()
        self._samplers.clear()
