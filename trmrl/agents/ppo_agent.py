"""On-policy Gaussian agents trained with :mod:`trmrl.ppo` (TrMRL and the reference agents).

A subclass supplies a model (``forward(inputs) -> ModelOutput(action mean, value)`` where
``inputs`` is a dict of tensors, a ``log_std`` parameter, and its policy/value parameter
split) and two views of the same inputs: while acting, its memory (``initial_memory``), the
step's rows (``step_features``) and how a step turns both into model inputs (``advance``,
device ops only); and ``batch_inputs`` for a whole batch of trials when learning. The two
must agree exactly; the tests check that the PPO ratio is 1 before the first gradient step.

Two switches for recurrent agents (RL2): ``trial_minibatches = True`` makes PPO's samples
whole trials (the model gets [trials, T, ...] inputs and returns [trials, T] outputs) instead
of timesteps, and a model whose acting forward returns a ``state`` has it kept as
``memory["state"]`` for the next step (:class:`RecurrentPPOAgent`, for RL2 and VariBAD).

With ``normalize_observations`` the agent owns a :class:`~trmrl.nn.RunningNormalizer` of
the observation, handed to ``build_model`` (``self.obs_normalizer``, None when off); the
model scales its inputs with it, and the statistics move after each update.

On a GPU with the trainer setting ``cuda_graphs`` the agent acts and learns through :mod:`trmrl.accel`'s graphed
steps, chosen once in ``__init__``; ``act``, ``update`` and ``load_state_dict`` are the same
code on every device.
"""

from __future__ import annotations

import abc
import copy
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from trmrl.accel import GraphedActing, GraphedPPOUpdate, OptimizerPlacement, compile_model, uses_cuda_graphs
from trmrl.agents.base import Agent, IterationResult
from trmrl.nn import RunningNormalizer
from trmrl.ppo import (JointLoss, PolicyLoss, PPOConfig, PPOUpdate, UpdatePhase, ValueLoss,
                       discounted_returns, gae, gaussian_entropy, gaussian_log_prob, make_optimizer)
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch
from trmrl.settings import AcceleratedSettings


class ModelOutput(NamedTuple):
    """What a PPO agent's model returns."""

    mean: torch.Tensor  # the action mean [..., act_dim]
    value: torch.Tensor | None  # the value [...]; None where the caller asked for none
    # the recurrent state after this step (acting, recurrent models): the agent keeps it as
    # memory["state"] for the next step
    state: torch.Tensor | None = None
    latent: torch.Tensor | None = None  # what the policy acts on, for latent maps (acting)


class PPOAgent(Agent):
    config: PPOConfig
    settings_class = AcceleratedSettings  # cuda_graphs, torch_compile
    settings: AcceleratedSettings
    # PPO minibatches of whole trials ([trials, T] samples, padding weighted 0) instead of
    # timesteps: for models that must see a trial from its start (recurrent ones)
    trial_minibatches: bool = False
    # values of the whole batch computed before the update, not at every acting step: acting
    # runs the policy alone (TrMRL's separate value encoder doubled its acting latency).
    # Needs a model whose forward takes value=False; not for trial minibatches (a recurrent
    # value must be carried while acting)
    values_from_batch: bool = False

    def __init__(self, config: PPOConfig, suite, device, seed,
                 settings: AcceleratedSettings | None = None):
        super().__init__(config, suite, device, seed, settings)
        torch.manual_seed(seed)  # parameter initialisation
        # build_model hands it to the model (whose state it is part of); update moves it
        self.obs_normalizer = (RunningNormalizer(suite.observation_dim)
                               if config.normalize_observations else None)
        self.model = self.build_model()
        if config.value_loss == "gaussian_nll":  # the value's log std, learned (std 1 at first)
            self.model.register_parameter("value_log_std", nn.Parameter(torch.zeros(())))
        self.model.to(device)
        # eager or graphed steps: chosen here, once
        self.graphed = uses_cuda_graphs(device, self.settings.cuda_graphs)
        self.compiled = self.graphed and self.settings.torch_compile and compile_model(self.model)
        self.optimizer_placement = OptimizerPlacement.for_graphs(device, self.graphed)
        self.phases = self.build_phases()
        self.optimizer = self.phases[0].optimizer
        # timestep minibatches; whole trials run eagerly even on a GPU (a minibatch step is a
        # few large kernels, one GRU call)
        self.run_update = (GraphedPPOUpdate if self.graphed else PPOUpdate)(self.phases, config)
        self.run_trial_update = PPOUpdate(self.phases, config)
        self.run_acting = GraphedActing(self) if self.graphed else EagerActing(self)
        self._acting_view: PPOAgent | None = None
        self.memory: dict[str, torch.Tensor] = {}
        # one CPU generator for action noise and minibatch order: identical runs on CPU
        self.generator = torch.Generator().manual_seed(seed)

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    # -- the update's phases and their optimisers -------------------------------------------
    def value_reads_policy_parameters(self) -> bool:
        """Whether the value is computed through the policy's parameters (a shared encoder):
        the released code's value optimiser then holds the whole policy too."""
        return False

    def build_phases(self) -> list[UpdatePhase]:
        config, placement = self.config, self.optimizer_placement
        policy = list(self.model.policy_parameters())
        value = list(self.model.value_parameters())
        log_std = getattr(self.model, "value_log_std", None)
        if log_std is not None:
            value.append(log_std)
        steps_per_epoch = max(1, config.epochs * self.nominal_samples() // config.minibatch_size)
        if config.update_order == "joint":
            optimizer = make_optimizer(
                [("policy", policy, config.lr_policy, config.lr_schedule_policy),
                 ("value", value, config.lr_value, config.lr_schedule_value)], config, placement)
            return [UpdatePhase(JointLoss(AgentMethod(self, "evaluate"), config, log_std), optimizer,
                                list(self.model.parameters()), steps_per_epoch)]
        # "policy_then_value": as released, the value optimiser holds every parameter the
        # value function owns, the policy included when it reads the policy's encoder
        if self.value_reads_policy_parameters():
            value = value + [p for p in policy if all(p is not v for v in value)]
        policy_optimizer = make_optimizer(
            [("policy", policy, config.lr_policy, config.lr_schedule_policy)], config, placement)
        value_optimizer = make_optimizer(
            [("value", value, config.lr_value, config.lr_schedule_value)], config, placement)
        return [UpdatePhase(PolicyLoss(AgentMethod(self, "evaluate_policy"), config),
                            policy_optimizer, policy,
                            steps_per_epoch, checks_kl=True, keep_zero_grads=True),
                UpdatePhase(ValueLoss(AgentMethod(self, "evaluate_value"), config, log_std),
                            value_optimizer,
                            value, steps_per_epoch, checks_kl=False, keep_zero_grads=True)]

    def nominal_samples(self) -> int:
        """Samples in a full iteration (trials x episodes x horizon timesteps, or trials for
        trial minibatches): the lr schedule's epoch is counted in these, as released."""
        config, suite = self.config, self.suite
        if self.trial_minibatches:
            return config.trials_per_update
        return (config.trials_per_update * (config.episodes_per_trial or suite.episodes_per_trial)
                * (config.horizon or suite.horizon))

    # -- memory: what an agent keeps between the steps of a trial -------------------------
    def initial_memory(self, num_trials: int) -> dict[str, torch.Tensor]:
        """The memory at a trial's start, device tensors [num_trials, ...]: none by default."""
        return {}

    def step_features(self, step: StepInput) -> np.ndarray:
        """This step's rows [N, D] as the model reads them (host side): by default the
        working memory (s_t, a_{t-1}, r_{t-1}, d_t)."""
        return step.augmented()

    def advance(self, memory: dict[str, torch.Tensor], x: torch.Tensor):
        """(model inputs, memory) for this step, from the memory so far and the step's rows
        ``x`` [N, D] on the device. Device ops only: on a GPU they are replayed from one CUDA
        graph with the model. A model whose output has a ``state`` has it kept as
        ``memory["state"]`` for the next step."""
        return {"x": x}, memory

    @abc.abstractmethod
    def batch_inputs(self, batch: TrialBatch) -> dict[str, torch.Tensor]:
        """Model inputs for every step of the batch, each [N, T, ...] on ``self.device``."""

    # -- acting ---------------------------------------------------------------------------
    def reset(self, num_trials: int) -> None:
        self.memory = self.initial_memory(num_trials)

    @torch.no_grad()
    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        features = np.asarray(self.step_features(step), np.float32)
        rows, act_dim = len(features), self.suite.action_dim
        noise = (torch.zeros(rows, act_dim) if deterministic
                 else torch.randn(rows, act_dim, generator=self.generator))
        out, latent, self.memory = self.run_acting(self.memory, features, noise)
        extras = {"logp": out[:, act_dim]}
        if not self.values_from_batch:
            extras["value"] = out[:, act_dim + 1]
        if self.record_memory and latent is not None:
            extras["memory"] = latent.cpu().numpy()
        return PolicyOutput(out[:, :act_dim], extras)

    def acting_step(self, memory: dict[str, torch.Tensor], x: torch.Tensor, noise: torch.Tensor):
        """One step of every trial: (action, log-prob, value, memory after it, the model's
        latent or None); the value is None with ``values_from_batch``. ``noise`` [N, act_dim]
        is standard normal; zeros act deterministically (the mean)."""
        inputs, memory = self.advance(memory, x)
        out = self.model(inputs, value=False) if self.values_from_batch else self.model(inputs)
        if out.state is not None:
            memory = {**memory, "state": out.state}
        log_std = self.action_log_std().expand_as(out.mean)
        action = out.mean + log_std.exp() * noise
        return action, gaussian_log_prob(out.mean, log_std, action), out.value, memory, out.latent

    def acting_columns(self, memory: dict[str, torch.Tensor], x: torch.Tensor, noise: torch.Tensor):
        """:meth:`acting_step` as (action | log-prob [| value] columns, memory, latent): one
        tensor for one transfer to the host."""
        action, logp, value, memory, latent = self.acting_step(memory, x, noise)
        columns = [action, logp[:, None]] + ([] if value is None else [value[:, None]])
        return torch.cat(columns, 1), memory, latent

    def acting_view(self) -> PPOAgent:
        """This agent with a memory of its own, for a pipelined sampler's second half of envs.

        A shallow copy sharing the model and the action-noise generator, with acting graphs
        of its own (a graph holds the memory it updates). Made once and kept, so that its
        graphs are captured once per run."""
        if self._acting_view is None:
            view = copy.copy(self)
            view.run_acting, view._acting_view = type(self.run_acting)(view), None
            self._acting_view = view
        self._acting_view.record_memory = self.record_memory
        return self._acting_view

    # -- learning -------------------------------------------------------------------------
    def train_iteration(self, sampler, tasks) -> IterationResult:
        self.model.eval()
        batch = sampler.run(self, tasks)
        self.model.train()
        metrics = self.update(batch)
        return IterationResult(batch.env_steps, batch.episode_return, batch.episode_success, metrics)

    def update(self, batch: TrialBatch) -> dict[str, float]:
        """PPO on the batch, then the observation statistics (see update_observation_statistics)."""
        metrics = self.update_ppo(batch)
        self.update_observation_statistics(batch)
        return metrics

    def update_observation_statistics(self, batch: TrialBatch) -> None:
        """Merge the batch's observations into the running normaliser, if any. Called last in
        an iteration's update: statistics move between iterations only, so that acting and
        learning in one iteration scale inputs alike (the PPO ratio starts at 1)."""
        if self.obs_normalizer is not None:
            self.obs_normalizer.update(to_device(batch.obs[batch.valid], self.device))

    def update_ppo(self, batch: TrialBatch) -> dict[str, float]:
        """PPO's epochs over the batch: policy and value."""
        valid = batch.valid
        inputs = self.batch_inputs(batch)
        if self.trial_minibatches:  # whole trials, [N, T, ...]; the padding weighs 0
            advantage, returns = self.advantages_and_targets(batch, batch.extras["value"])
            samples = {"logp": batch.extras["logp"], "advantage": advantage, "return": returns,
                       "action": batch.action}
            # zeros after each trial's end, whatever is there: weight-0 terms stay finite
            samples = {k: np.where(valid.reshape(*valid.shape, *[1] * (v.ndim - 2)), v, 0).astype(v.dtype)
                       for k, v in samples.items()}
            samples["weight"] = valid.astype(np.float32)
            samples = {k: to_device(v, self.device) for k, v in samples.items()}
            for key, value in inputs.items():
                samples["input_" + key] = value
            return self.run_trial_update(samples, self.generator, capacity=valid.shape[0])
        # capacity: every step of every trial, the most an iteration yields
        return self.run_update(self.timestep_samples(batch, inputs), self.generator,
                               capacity=valid.size)

    def timestep_samples(self, batch: TrialBatch,
                         inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """PPO's samples of a batch, one per valid timestep (each [M, ...] on the device):
        "logp", "advantage", "return", "action" and the model inputs as "input_<name>".
        ``inputs``: this batch's :meth:`batch_inputs`, if already made."""
        valid = batch.valid
        inputs = self.batch_inputs(batch) if inputs is None else inputs
        mask = to_device(valid, self.device)
        inputs = {key: value[mask] for key, value in inputs.items()}  # the valid steps
        values = batch.extras["value"] if "value" in batch.extras else self.batch_values(inputs, valid)
        advantage, returns = self.advantages_and_targets(batch, values)
        samples = {"logp": batch.extras["logp"][valid], "advantage": advantage[valid],
                   "return": returns[valid], "action": batch.action[valid]}
        samples = {k: to_device(v, self.device) for k, v in samples.items()}
        for key, value in inputs.items():
            samples["input_" + key] = value
        return samples

    def advantages_and_targets(self, batch: TrialBatch, values: np.ndarray):
        """GAE advantages [N, T] and the value function's regression targets."""
        config = self.config
        advantage, lambda_returns = gae(batch.reward, values, batch.valid, config.gamma,
                                        config.gae_lambda)
        if config.value_target == "discounted_return":
            return advantage, discounted_returns(batch.reward, batch.valid, config.gamma)
        return advantage, lambda_returns

    @torch.no_grad()
    def batch_values(self, inputs: dict[str, torch.Tensor], valid: np.ndarray,
                     chunk: int = 16384) -> np.ndarray:
        """Values [N, T] (0 on padding) of the valid steps' model inputs (each [M, ...]), for
        agents with ``values_from_batch``: what the acting step would have computed."""
        num = len(next(iter(inputs.values())))
        # model.forward, not model(): uncompiled, since a compiled call would compile anew
        # for every batch size it meets
        parts = [self.model.forward({k: v[lo:lo + chunk] for k, v in inputs.items()}).value
                 for lo in range(0, num, chunk)]
        values = np.zeros(valid.shape, np.float32)
        values[valid] = torch.cat(parts).cpu().numpy()
        return values

    def evaluate(self, minibatch: dict[str, torch.Tensor]):
        """(log-prob, entropy, value) of a minibatch of samples under the current model."""
        out = self.model(model_inputs(minibatch))
        return (*self.action_terms(out.mean, minibatch["action"]), out.value)

    def action_terms(self, mean: torch.Tensor, action: torch.Tensor):
        """(log-prob, entropy) of ``action`` under the Gaussian policy with this ``mean``."""
        log_std = self.action_log_std().expand_as(mean)
        return gaussian_log_prob(mean, log_std, action), gaussian_entropy(log_std)

    def evaluate_policy(self, minibatch: dict[str, torch.Tensor]):
        """(log-prob, entropy) for the policy phase; agents whose model can skip the value
        override this."""
        return self.evaluate(minibatch)[:2]

    def evaluate_value(self, minibatch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Values for the value phase; agents whose model can skip the policy override this."""
        return self.evaluate(minibatch)[2]

    def action_log_std(self) -> torch.Tensor:
        """The policy's log std [act_dim] as acting and learning use it."""
        return self.model.log_std

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "generator": self.generator.get_state(),
                 "update_steps": [phase.steps for phase in self.phases]}
        if len(self.phases) > 1:
            state["value_optimizer"] = self.phases[1].optimizer.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        saved = [state["optimizer"]] + ([state["value_optimizer"]] if len(self.phases) > 1 else [])
        # checkpoints from before the lr schedules: constant lrs, whose clock does not matter
        steps = state.get("update_steps", [0] * len(self.phases))
        for phase, optimizer_state, step_count in zip(self.phases, saved, steps):
            phase.optimizer.load_state_dict(optimizer_state)
            phase.steps = step_count
            # a checkpoint may come from the other path (GPU graphs <-> eager): match this one
            self.optimizer_placement.place(phase.optimizer)
        self.generator.set_state(state["generator"])
        self.run_update.reset()  # new optimiser state: captured again at the next update


class AgentMethod:
    """``agent.<name>(...)``, looked up at each call (so a wrapped method is the one used) and
    copied along with the agent by ``copy.deepcopy``, which a bound method in a closure is not."""

    def __init__(self, agent: PPOAgent, name: str):
        self.agent, self.name = agent, name

    def __call__(self, *args):
        return getattr(self.agent, self.name)(*args)


class RecurrentPPOAgent(PPOAgent):
    """A PPO agent whose model carries a recurrent state [trials, model.state_size] across
    the episodes of a trial (RL2's GRUs, VariBAD's encoder): zeros at each trial's start,
    fed with the working memory (s_t, a_{t-1}, r_{t-1}, d_t) at every step."""

    def initial_memory(self, num_trials: int) -> dict[str, torch.Tensor]:
        return {"state": torch.zeros(num_trials, self.model.state_size, device=self.device)}

    def advance(self, memory, x):
        return {"x": x, "state": memory["state"]}, memory  # the forward's new state comes next


class EagerActing:
    """An agent's acting step op by op (any device); :class:`trmrl.accel.GraphedActing` is
    the same step replayed from CUDA graphs."""

    def __init__(self, agent: PPOAgent):
        self.agent = agent

    def __call__(self, memory: dict[str, torch.Tensor], features: np.ndarray, noise: torch.Tensor):
        """(action | log-prob [| value] rows on the host, the latent, the memory after it)."""
        device = self.agent.device
        columns, memory, latent = self.agent.acting_columns(memory, to_device(features, device),
                                                            noise.to(device))
        return columns.cpu().numpy(), latent, memory


def model_inputs(minibatch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs among a minibatch's samples (stored as ``input_<name>``)."""
    return {k[len("input_"):]: v for k, v in minibatch.items() if k.startswith("input_")}


def to_device(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
