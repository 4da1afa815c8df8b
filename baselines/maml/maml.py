"""MAML-TRPO: a policy initialisation that one policy-gradient step adapts to a task (Finn et al. 2017).

The policy is a Gaussian MLP (tanh hidden layers, a state-independent log std); no memory.
It acts in its own units, [-action_scale, action_scale] mapped linearly onto the env's action
box (garage's ``normalize(env, expected_action_scale=10)``): with the initial std 1.0 the
exploration noise is a tenth of the box, not a Gaussian mostly clipped at its bounds.
One meta-iteration, for a meta-batch of training tasks:

1. *pre-update* episodes: ``episodes_per_task`` episodes per task with the meta-parameters
   theta (all tasks' episodes run in lockstep, one env per episode);
2. the *inner step*, per task i: theta_i' = theta - inner_lr * grad L_i(theta), where L_i is
   the policy-gradient loss -mean_t[log pi_theta(a_t|s_t) A_t] on task i's pre-update
   episodes (advantages from a linear feature baseline fitted to the task's returns,
   GAE(gamma, lambda), standardised per task);
3. *post-update* episodes: ``episodes_per_task`` more per task, each task with its theta_i';
4. the *outer step*: TRPO on theta for the surrogate mean_i mean_t[ratio_i A_i] of the
   post-update episodes, where the ratio's numerator is pi_{theta_i'(theta)}: the surrogate,
   its gradient and the KL constraint are differentiated *through* the inner step (second
   order: the inner gradient is built with ``create_graph=True``). The search direction is
   the conjugate-gradient solution of F x = g, F the Hessian of the mean KL between the old
   and new post-update policies (Hessian-vector products by double backward), scaled to the
   KL bound and backtracked until the surrogate improves with KL <= max_kl.

Tasks differ only in their parameters, so the per-task copies theta_i are one tensor with a
leading task dimension, and the inner step for every task is one backward pass.

Evaluation, two protocols (``eval_episodes_per_step``):

* N > 1 (defaults v3: N = ``episodes_per_task``, the data of one meta-training inner step,
  as the MAML paper's test script and ProMP's post-update returns have it): for each test
  task, "episode" k of the trial is N episodes run with the parameters after k inner steps,
  its return their mean; step k+1 adapts on those N episodes. ``trmrl evaluate`` runs it
  through ``evaluation_trials``, on a sampler of its own with N envs per task.
* N = 1 (the protocol before defaults v3): episode 1 of a trial runs theta; at the start of
  each later episode the trial's parameters take one inner step on the episode just played.
  One 200-step episode is a small fraction of the data theta was meta-trained to step on,
  and such a step can make the policy worse (docs/agents/maml.md). The periodic test
  evaluation of ``trmrl train`` (progress.csv) always runs this one, inside its trials.

Actions are always sampled: the policy gradient of a mean action is zero, so MAML cannot
adapt from deterministic episodes. With ``deterministic=True`` the noise comes from a
generator re-seeded at every ``reset``, so evaluations are repeatable (and identical for
identical parameters).

Deviation: the pre- and post-update episodes come from this package's sampler, one env per
episode; ProMP and garage sample the same counts with their own workers (every difference
from ProMP, and why: docs/agents/maml.md). Defaults and their sources:
``trmrl/configs/maml.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from trmrl.agents.base import Agent, IterationResult
from trmrl.errors import ConfigError
from trmrl.ppo import gae, gaussian_kl, gaussian_log_prob
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch, TrialSampler
from trmrl.settings import AgentConfig, TrainerSettings

@dataclass
class MAMLConfig(AgentConfig):
    # `trmrl train` takes per-env defaults from trmrl/configs/maml.yaml; these are the
    # values of a bare MAMLConfig() (garage's MuJoCo MAML-TRPO examples, but action_scale 1).
    trials_per_update: int = 20  # meta-batch: tasks per outer step
    episodes_per_task: int = 40  # episodes per task before the inner step, and as many after
    hidden: tuple[int, ...] = (64, 64)  # tanh MLP of the Gaussian policy's mean
    init_std: float = 1.0  # initial action standard deviation, in the policy's units
    # the policy's [-s, s] maps linearly onto the env's action box; 1 = the box itself (the
    # behaviour before this key existed), the YAML's 10 = garage's expected_action_scale
    action_scale: float = 1.0
    inner_lr: float = 0.1  # step size of the inner policy-gradient step
    gamma: float = 0.99  # discount of the advantages
    gae_lambda: float = 1.0  # GAE lambda (1: discounted return minus baseline)
    baseline_reg: float = 1e-5  # ridge coefficient of the linear feature baseline
    max_kl: float = 0.01  # TRPO's bound on the mean KL of the post-update policies
    cg_iters: int = 10  # conjugate-gradient iterations for the TRPO direction
    cg_damping: float = 1e-5  # added to the Fisher-vector product (F + damping I) x
    backtrack_ratio: float = 0.8  # line search: step *= ratio until accepted
    max_backtracks: int = 15  # line search: tries before the step is rejected
    # `trmrl evaluate`: episodes each inner step adapts on (and each reported return averages),
    # all run with that step's parameters; None = episodes_per_task, as meta-training's inner
    # step (the MAML paper, ProMP); 1 = one step per episode of the trial (before defaults v3)
    eval_episodes_per_step: int | None = 1

    def validate(self) -> None:
        super().validate()
        if self.eval_episodes_per_step is not None and self.eval_episodes_per_step <= 0:
            raise ConfigError("eval_episodes_per_step must be a positive integer or null "
                              f"(= episodes_per_task), got {self.eval_episodes_per_step!r}")
        for name in ("episodes_per_task", "inner_lr", "max_kl", "cg_iters", "max_backtracks",
                     "init_std", "action_scale"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.hidden or min(self.hidden) <= 0:
            raise ConfigError(f"hidden must be a non-empty list of positive sizes, got {list(self.hidden)!r}")
        if not 0 < self.backtrack_ratio < 1:
            raise ConfigError(f"backtrack_ratio must be in (0, 1), got {self.backtrack_ratio!r}")
        for name in ("gamma", "gae_lambda"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")


# ---------------------------------------------------------------------------------------
# The policy, as a function of parameters with a leading group dimension
# ---------------------------------------------------------------------------------------
# Parameters are a list [W_1, b_1, ..., W_L, b_L, log_std] with W_l [G, in, out], b_l [G, 1, out]
# and log_std [G, 1, act]: G groups of rows (tasks, or trials), each with its own copy.
Params = list[torch.Tensor]


def init_params(obs_dim: int, act_dim: int, hidden: tuple[int, ...], init_std: float,
                generator: torch.Generator) -> Params:
    """theta without the group dimension: Xavier-uniform weights (output layer gain 0.01),
    zero biases, log std = log(init_std)."""
    sizes = [obs_dim, *hidden, act_dim]
    params = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        gain = 0.01 if i == len(sizes) - 2 else 1.0
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        params += [(torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound,
                   torch.zeros(1, fan_out)]
    params.append(torch.full((1, act_dim), math.log(init_std)))
    return params


def grouped(params: Params, groups: int) -> Params:
    """theta broadcast to ``groups`` copies (a view: gradients flow back into theta)."""
    return [p.unsqueeze(0).expand(groups, *p.shape) for p in params]


def policy_mean(params: Params, obs: torch.Tensor) -> torch.Tensor:
    """Action means [G, M, act] of observations [G, M, obs]."""
    h = obs
    layers = len(params) // 2
    for i in range(layers):
        h = torch.baddbmm(params[2 * i + 1], h, params[2 * i])
        if i < layers - 1:
            h = torch.tanh(h)
    return h


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the last dimension where ``mask`` [G, M] is 1, per group: [G]."""
    return (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)


# ---------------------------------------------------------------------------------------
# Advantages: a linear feature baseline per task
# ---------------------------------------------------------------------------------------
def baseline_features(obs: np.ndarray, step: np.ndarray) -> np.ndarray:
    """[..., 2*obs+4] features of the linear baseline: s, s^2 (s clipped to [-10, 10]),
    t/100 and its square and cube, 1 (t = step inside the episode)."""
    s = np.clip(obs, -10, 10)
    t = step[..., None] / 100.0
    return np.concatenate([s, s * s, t, t * t, t ** 3, np.ones_like(t)], -1)


def fit_baseline(features: np.ndarray, returns: np.ndarray, mask: np.ndarray,
                 reg: float) -> np.ndarray:
    """Ridge regression of returns on features over the masked steps: coefficients [F]."""
    x, y = features[mask], returns[mask]
    gram, target = x.T @ x, x.T @ y
    for _ in range(5):  # a singular fit gets a stronger ridge, as far as needed
        coefficients = np.linalg.solve(gram + reg * np.eye(len(gram)), target) \
            if np.isfinite(gram).all() else None
        if coefficients is not None and np.isfinite(coefficients).all():
            return coefficients
        reg *= 10
    return np.zeros(len(gram))


def episode_advantages(obs: np.ndarray, reward: np.ndarray, mask: np.ndarray, gamma: float,
                       lam: float, reg: float) -> np.ndarray:
    """Standardised GAE advantages [E, H] for one task's episodes (rows), against a linear
    baseline fitted to those episodes' returns."""
    mask = mask.astype(bool)
    step = np.broadcast_to(np.arange(reward.shape[1], dtype=np.float64), reward.shape)
    features = baseline_features(obs.astype(np.float64), step)
    # returns-to-go are GAE's value targets for a zero value function at lambda 1; the value
    # after an episode's end is 0 in both (each row is one whole episode)
    _, returns = gae(reward, np.zeros_like(reward), mask, gamma, 1.0)
    value = features @ fit_baseline(features, returns, mask, reg) * mask
    advantage = gae(reward, value, mask, gamma, lam)[0].astype(np.float64)  # standardised in float64
    valid = advantage[mask]
    return np.where(mask, (advantage - valid.mean()) / (valid.std() + 1e-8), 0.0)


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------
class MAMLAgent(Agent):
    name = "maml"
    defaults = "trmrl.configs:maml.yaml"
    collects_trainer_trials = False  # one-episode trials: pre- and post-update episodes on its own samplers
    config_class = MAMLConfig
    config: MAMLConfig

    def __init__(self, config: MAMLConfig, suite, device, seed,
                 settings: TrainerSettings | None = None):
        super().__init__(config, suite, device, seed, settings)
        init = torch.Generator().manual_seed(seed)
        self.theta = [p.to(device).requires_grad_() for p in init_params(
            suite.observation_dim, suite.action_dim, config.hidden, config.init_std, init)]
        self.generator = torch.Generator().manual_seed(seed + 1)  # action noise while training
        self.eval_generator = torch.Generator()  # re-seeded per reset: repeatable evaluations
        self.eval_seed = seed + 2
        self.collect_calls = 0  # reset-seed index of the agent's own sampler
        self._collect_noise_seed: int | None = None  # evaluation_trials' noise seed per step
        self._sampler: TrialSampler | None = None
        self._collecting: Params | None = None  # params per task while collecting, else None
        # env action = centre + policy action * half_range / action_scale
        low, high = (torch.as_tensor(b, dtype=torch.float32) for b in
                     (suite.spaces()[1].low, suite.spaces()[1].high))
        self._action_centre, self._action_unit = (high + low) / 2, (high - low) / 2 / config.action_scale

    # -- acting: a trial = theta, then one inner step per finished episode ------------------
    def reset(self, num_trials: int) -> None:
        self.eval_generator.manual_seed(
            self.eval_seed if self._collect_noise_seed is None else self._collect_noise_seed)
        if self._collecting is not None:  # train_iteration chose the parameters
            self._rows_params = self._collecting
            self._history = None
            return
        with torch.no_grad():
            self._rows_params = [p.detach().clone() for p in grouped(self.theta, num_trials)]
        horizon = self.config.horizon or self.suite.horizon
        obs_dim, act_dim = self.suite.observation_dim, self.suite.action_dim
        self._history = {"obs": np.zeros((num_trials, horizon, obs_dim), np.float32),
                         "action": np.zeros((num_trials, horizon, act_dim), np.float32),
                         "reward": np.zeros((num_trials, horizon), np.float32),
                         "length": np.zeros(num_trials, np.int64)}

    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        if self._history is not None:
            self._adapt_finished_episodes(step)
        params = self._rows_params
        groups = params[0].shape[0]
        obs = torch.from_numpy(step.obs).to(self.device, torch.float32)
        with torch.no_grad():
            mean = policy_mean(params, obs.reshape(groups, -1, obs.shape[-1]))
            std = torch.exp(params[-1]).expand_as(mean)
            mean, std = mean.reshape(len(obs), -1).cpu(), std.reshape(len(obs), -1).cpu()
        generator = self.eval_generator if deterministic else self.generator
        action = mean + std * torch.randn(mean.shape, generator=generator)
        if self._history is not None:
            self._record(step, action.numpy())
        return PolicyOutput((self._action_centre + action * self._action_unit).numpy())

    def policy_units(self, env_action: np.ndarray) -> np.ndarray:
        """The policy's actions behind env actions it returned (``act``'s inverse map)."""
        return (env_action - self._action_centre.numpy()) / self._action_unit.numpy()

    def _record(self, step: StepInput, action: np.ndarray) -> None:
        history, rows = self._history, np.flatnonzero(step.active)
        at = history["length"][rows]
        if (at >= history["obs"].shape[1]).any():  # an episode longer than the horizon
            self._grow_history()
        history["obs"][rows, at] = step.obs[rows]
        history["action"][rows, at] = action[rows]
        history["length"][rows] += 1

    def _grow_history(self) -> None:
        for key in ("obs", "action", "reward"):
            array = self._history[key]
            self._history[key] = np.concatenate([array, np.zeros_like(array)], 1)

    def _adapt_finished_episodes(self, step: StepInput) -> None:
        """Complete each row's last recorded step with its reward; rows that start a new
        episode take one inner step on the episode they finished."""
        history = self._history
        length = history["length"]
        rows = np.flatnonzero(step.active & (length > 0))
        history["reward"][rows, length[rows] - 1] = step.prev_reward[rows]
        done = np.flatnonzero(step.active & step.episode_start & (length > 0))
        if len(done) == 0:
            return
        horizon = int(length[done].max())
        mask = np.arange(horizon) < length[done][:, None]
        obs, action = history["obs"][done, :horizon], history["action"][done, :horizon]
        reward = history["reward"][done, :horizon]
        advantage = np.stack([episode_advantages(o[None], r[None], m[None], self.config.gamma,
                                                 self.config.gae_lambda, self.config.baseline_reg)[0]
                              for o, r, m in zip(obs, reward, mask)])
        params = [p[done] for p in self._rows_params]
        data = self._to_torch(obs[:, None], action[:, None], advantage[:, None], mask[:, None])
        adapted = self.inner_step(params, data, create_graph=False)
        for p, new in zip(self._rows_params, adapted):
            p[done] = new
        length[done] = 0

    # -- the inner and outer steps ----------------------------------------------------------
    def inner_step(self, params: Params, data: dict[str, torch.Tensor],
                   create_graph: bool) -> Params:
        """theta_i' = theta_i - inner_lr * grad L_i(theta_i) for every group i at once.

        ``data`` holds obs [G, M, obs], action [G, M, act], advantage [G, M], mask [G, M].
        With ``create_graph`` the result is differentiable in ``params`` (second order, for
        the outer step); without, it is a plain step on detached copies."""
        with torch.enable_grad():
            if not create_graph:
                params = [p.detach().requires_grad_() for p in params]
            logp = gaussian_log_prob(policy_mean(params, data["obs"]), params[-1], data["action"])
            loss = -masked_mean(logp * data["advantage"], data["mask"])
            # each group's loss depends only on its own copy: one backward gives every gradient
            grads = torch.autograd.grad(loss.sum(), params, create_graph=create_graph)
            adapted = [p - self.config.inner_lr * g for p, g in zip(params, grads)]
        return adapted if create_graph else [p.detach() for p in adapted]

    def _to_torch(self, obs, action, advantage, mask) -> dict[str, torch.Tensor]:
        """Per-group tensors from arrays [G, E, H, ...]: the group's episodes as one sequence."""
        def flat(array):
            array = np.ascontiguousarray(array, np.float32)
            return torch.from_numpy(array.reshape(array.shape[0], -1, *array.shape[3:])).to(self.device)
        return {"obs": flat(obs), "action": flat(action), "advantage": flat(advantage),
                "mask": flat(mask)}

    def task_data(self, batch: TrialBatch, groups: int) -> dict[str, torch.Tensor]:
        """The episodes of a collection (one per row, rows task-major) as per-task tensors,
        with standardised advantages from each task's own baseline."""
        E = batch.num_trials // groups
        obs = batch.obs.reshape(groups, E, *batch.obs.shape[1:])
        action = self.policy_units(batch.action).reshape(groups, E, *batch.action.shape[1:])
        reward = batch.reward.reshape(groups, E, -1).astype(np.float64)
        mask = batch.valid.reshape(groups, E, -1)
        advantage = np.stack([episode_advantages(obs[g], reward[g], mask[g], self.config.gamma,
                                                 self.config.gae_lambda, self.config.baseline_reg)
                              for g in range(groups)])
        return self._to_torch(obs, action, advantage, mask)

    def _collect(self, sampler: TrialSampler, tasks, params: Params, episodes: int,
                 eval_step: int | None = None) -> TrialBatch:
        """``episodes`` one-episode trials per task (rows task-major), task i acting with
        ``params`` group i. Training collections (``eval_step`` None) draw their noise from
        the training generator and advance the reset seeds; evaluation step k reuses reset
        seeds call k and noise seeded by (eval_seed, k), and leaves the training state alone."""
        self._collecting = params
        if eval_step is not None:
            self._collect_noise_seed = int(np.random.SeedSequence(
                [self.eval_seed, eval_step]).generate_state(1)[0])
        try:
            batch = sampler.run(self, [task for task in tasks for _ in range(episodes)],
                                deterministic=eval_step is not None,
                                call=self.collect_calls if eval_step is None else eval_step)
        finally:
            self._collecting = None
            self._collect_noise_seed = None
        if eval_step is None:
            self.collect_calls += 1
        return batch

    def evaluation_trials(self, tasks, episodes: int, horizon: int | None,
                          seed: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The protocol of ``eval_episodes_per_step`` = N > 1 (module docstring): returns
        and success rates [tasks, episodes], entry [i, k] the mean over N episodes of task i
        with the parameters after k inner steps. None where N = 1: the evaluation's own
        trials serve (one inner step per episode, in ``act``)."""
        N = self.config.eval_episodes_per_step or self.config.episodes_per_task
        if N == 1:
            return None
        G = len(tasks)
        returns = np.zeros((G, episodes))
        success = np.full((G, episodes), np.nan, np.float32)
        with torch.no_grad():
            params = [p.detach().clone() for p in grouped(self.theta, G)]
        with TrialSampler(self.suite, G * N, horizon=horizon, episodes_per_trial=1,
                          num_workers=min(self.settings.num_workers, G * N), seed=seed) as sampler:
            for k in range(episodes):
                batch = self._collect(sampler, tasks, params, N, eval_step=k)
                returns[:, k] = batch.episode_return.reshape(G, N).mean(1)
                if self.suite.has_success:
                    success[:, k] = batch.episode_success.reshape(G, N).mean(1)
                if k + 1 < episodes:  # step k+1 adapts on the N episodes of step k
                    params = self.inner_step(params, self.task_data(batch, G), create_graph=False)
        return returns, success

    def _own_sampler(self, trainer_sampler: TrialSampler, rows: int) -> TrialSampler:
        """One env per episode of the meta-batch, one-episode trials."""
        if self._sampler is None or self._sampler.num_envs != rows:
            self.close()
            self._sampler = TrialSampler(self.suite, rows, horizon=trainer_sampler.horizon,
                                         episodes_per_trial=1, num_workers=self.settings.num_workers,
                                         seed=trainer_sampler.seed + 1)
        return self._sampler

    def train_iteration(self, sampler, tasks) -> IterationResult:
        config, G = self.config, len(tasks)
        collector = self._own_sampler(sampler, G * config.episodes_per_task)
        with torch.no_grad():
            theta_rows = [p.detach().clone() for p in grouped(self.theta, 1)]
        pre = self._collect(collector, tasks, theta_rows, config.episodes_per_task)
        pre_data = self.task_data(pre, G)
        adapted = self.inner_step(grouped(self.theta, G), pre_data, create_graph=False)
        post = self._collect(collector, tasks, adapted, config.episodes_per_task)
        post_data = self.task_data(post, G)
        metrics = self.outer_step(pre_data, post_data)

        def per_task(values):  # [G*E, 1] -> [G]: each task's mean over its episodes
            return values.reshape(G, -1).mean(1)

        returns = np.stack([per_task(pre.episode_return), per_task(post.episode_return)], 1)
        success = np.stack([per_task(pre.episode_success), per_task(post.episode_success)], 1)
        metrics.update(pre_update_return=float(returns[:, 0].mean()),
                       post_update_return=float(returns[:, 1].mean()))
        return IterationResult(pre.env_steps + post.env_steps, returns, success, metrics)

    def post_update_distribution(self, theta: Params, pre_data, post_data, create_graph: bool):
        """Means [G, M, act] and log stds [G, 1, act] of pi_{theta_i'(theta)} on the
        post-update observations, differentiable in theta through the inner step."""
        G = pre_data["obs"].shape[0]
        adapted = self.inner_step(grouped(theta, G), pre_data, create_graph=create_graph)
        return policy_mean(adapted, post_data["obs"]), adapted[-1]

    def outer_step(self, pre_data, post_data) -> dict[str, float]:
        """One TRPO step on theta through the inner step (see the module docstring)."""
        config, theta = self.config, self.theta
        action, advantage, mask = post_data["action"], post_data["advantage"], post_data["mask"]

        def surrogate_and_kl(create_graph: bool):
            mean, log_std = self.post_update_distribution(theta, pre_data, post_data, create_graph)
            logp = gaussian_log_prob(mean, log_std, action)
            surrogate = masked_mean(torch.exp(logp - old_logp) * advantage, mask).mean()
            kl = masked_mean(gaussian_kl(old_mean, 2 * old_log_std, mean, 2 * log_std), mask).mean()
            return surrogate, kl

        with torch.no_grad():
            old_mean, old_log_std = (t.detach() for t in self.post_update_distribution(
                theta, pre_data, post_data, create_graph=False))
            old_logp = gaussian_log_prob(old_mean, old_log_std, action)
        with torch.enable_grad():
            surrogate, kl = surrogate_and_kl(create_graph=True)
            gradient = flat(torch.autograd.grad(surrogate, theta, retain_graph=True))
            kl_gradient = flat(torch.autograd.grad(kl, theta, create_graph=True))

            def fisher_product(vector: torch.Tensor) -> torch.Tensor:
                hvp = torch.autograd.grad(kl_gradient @ vector, theta, retain_graph=True)
                return flat(hvp) + config.cg_damping * vector

            direction, residual = conjugate_gradient(fisher_product, gradient, config.cg_iters)
            curvature = float(direction @ fisher_product(direction))
        before = float(surrogate.detach())
        old_theta = flat(theta).detach().clone()
        step_size = math.sqrt(2 * config.max_kl / max(curvature, 1e-12))
        full_step = step_size * direction
        accepted, new_surrogate, new_kl, fraction = False, before, 0.0, 0.0
        for k in range(config.max_backtracks):
            fraction = config.backtrack_ratio ** k
            set_flat(theta, old_theta + fraction * full_step)
            with torch.no_grad():  # (the inner step still takes its gradient)
                new_surrogate, new_kl = (float(v) for v in surrogate_and_kl(create_graph=False))
            if new_surrogate > before and new_kl <= config.max_kl and math.isfinite(new_surrogate):
                accepted = True
                break
        if not accepted:  # no step kept the KL bound and improved: stay
            set_flat(theta, old_theta)
            new_surrogate, new_kl, fraction = before, 0.0, 0.0
        if not all(torch.isfinite(p).all() for p in theta):
            raise FloatingPointError("non-finite policy parameters after the TRPO step")
        return {"surrogate_before": before, "surrogate_after": new_surrogate, "kl": new_kl,
                "step_fraction": fraction, "cg_residual": residual,
                "gradient_norm": float(gradient.norm()),
                "policy_std": float(torch.exp(theta[-1].detach()).mean())}

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"theta": [p.detach().cpu().clone() for p in self.theta],
                "generator": self.generator.get_state(), "eval_seed": self.eval_seed,
                "collect_calls": self.collect_calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["theta"]) != len(self.theta) or any(
                saved.shape != p.shape for saved, p in zip(state["theta"], self.theta)):
            raise ValueError("policy parameter shapes differ from this agent's")
        with torch.no_grad():
            for p, saved in zip(self.theta, state["theta"]):
                p.copy_(saved)
        self.generator.set_state(state["generator"])
        self.eval_seed = int(state["eval_seed"])
        self.collect_calls = int(state["collect_calls"])

    def close(self) -> None:
        if self._sampler is not None:
            self._sampler.close()
            self._sampler = None


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def set_flat(params: Params, vector: torch.Tensor) -> None:
    with torch.no_grad():
        offset = 0
        for p in params:
            p.copy_(vector[offset:offset + p.numel()].view_as(p))
            offset += p.numel()


def conjugate_gradient(matrix_product, b: torch.Tensor, iters: int,
                       tolerance: float = 1e-10) -> tuple[torch.Tensor, float]:
    """x with A x ~= b for a symmetric positive-definite A given as ``matrix_product``;
    returns (x, the final squared residual)."""
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = float(r @ r)
    for _ in range(iters):
        if rr < tolerance:
            break
        Ap = matrix_product(p)
        alpha = rr / float(p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        new_rr = float(r @ r)
        p = r + (new_rr / rr) * p
        rr = new_rr
    return x, rr
