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
"""

from __future__ import annotations

import abc
import copy
import logging
import os
import shutil
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn as nn

from trmrl.agents.base import Agent, IterationResult
from trmrl.nn import RunningNormalizer
from trmrl.ppo import (GraphedPPOUpdate, JointLoss, PolicyLoss, PPOConfig, UpdatePhase, ValueLoss,
                       discounted_returns, gae, gaussian_entropy, gaussian_log_prob,
                       graphed_update, make_optimizer, ppo_update)
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch

log = logging.getLogger(__name__)


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
    # PPO minibatches of whole trials ([trials, T] samples, padding weighted 0) instead of
    # timesteps: for models that must see a trial from its start (recurrent ones)
    trial_minibatches: bool = False
    # values of the whole batch computed before the update, not at every acting step: acting
    # runs the policy alone (TrMRL's separate value encoder doubled its acting latency).
    # Needs a model whose forward takes value=False; not for trial minibatches (a recurrent
    # value must be carried while acting)
    values_from_batch: bool = False

    def __init__(self, config: PPOConfig, suite, device, seed):
        super().__init__(config, suite, device, seed)
        torch.manual_seed(seed)  # parameter initialisation
        # build_model hands it to the model (whose state it is part of); update moves it
        self.obs_normalizer = (RunningNormalizer(suite.observation_dim)
                               if config.normalize_observations else None)
        self.model = self.build_model()
        if config.value_loss == "gaussian_nll":  # the value's log std, learned (std 1 at first)
            self.model.register_parameter("value_log_std", nn.Parameter(torch.zeros(())))
        self.model.to(device)
        self.graphed = device.type == "cuda" and config.cuda_graphs
        self.compiled = self.graphed and config.torch_compile and compile_model(self.model)
        self.phases = self.build_phases()
        self.optimizer = self.phases[0].optimizer
        self._graphed_update = None  # captured on the first update (after any resume)
        self._acting_graphs: dict[int, GraphedActing] = {}  # one per batch size
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
        config, graphed = self.config, self.graphed
        policy = list(self.model.policy_parameters())
        value = list(self.model.value_parameters())
        log_std = getattr(self.model, "value_log_std", None)
        if log_std is not None:
            value.append(log_std)
        steps_per_epoch = max(1, config.epochs * self.nominal_samples() // config.minibatch_size)
        if config.update_order == "joint":
            optimizer = make_optimizer(
                [("policy", policy, config.lr_policy, config.lr_schedule_policy),
                 ("value", value, config.lr_value, config.lr_schedule_value)], config, graphed)
            return [UpdatePhase(JointLoss(AgentMethod(self, "evaluate"), config, log_std), optimizer,
                                list(self.model.parameters()), steps_per_epoch)]
        # "policy_then_value": as released, the value optimiser holds every parameter the
        # value function owns, the policy included when it reads the policy's encoder
        if self.value_reads_policy_parameters():
            value = value + [p for p in policy if all(p is not v for v in value)]
        policy_optimizer = make_optimizer(
            [("policy", policy, config.lr_policy, config.lr_schedule_policy)], config, graphed)
        value_optimizer = make_optimizer(
            [("value", value, config.lr_value, config.lr_schedule_value)], config, graphed)
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
        if self.graphed:
            graph = self._acting_graphs.get(rows)
            if graph is None:
                graph = self._acting_graphs[rows] = GraphedActing(self, rows, features.shape[1])
            if self.memory is not graph.memory:  # a new trial (reset): its memory goes in
                for key, value in self.memory.items():
                    graph.memory[key].copy_(value)
                self.memory = graph.memory
            graph.features[:] = features
            if deterministic:
                graph.noise.zero_()
            else:
                torch.randn(graph.noise.shape, generator=self.generator, out=graph.noise)
            out, latent = graph()
        else:
            noise = (torch.zeros(rows, act_dim) if deterministic
                     else torch.randn(rows, act_dim, generator=self.generator))
            action, logp, value, self.memory, latent = self.acting_step(
                self.memory, to_device(features, self.device), noise.to(self.device))
            out = torch.cat(pack(action, logp, value), 1).cpu().numpy()
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

    def acting_view(self) -> PPOAgent:
        """This agent with a memory of its own, for a pipelined sampler's second half of envs.

        A shallow copy sharing the model and the action-noise generator, with acting graphs
        of its own (a graph holds the memory it updates). Made once and kept, so that its
        graphs are captured once per run."""
        if self._acting_view is None:
            view = copy.copy(self)
            view._acting_graphs, view._acting_view = {}, None
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
            # eager even on a GPU: a minibatch step is a few large kernels (one GRU call)
            return ppo_update(self.phases, samples, self.config, self.generator)
        mask = to_device(valid, self.device)
        inputs = {key: value[mask] for key, value in inputs.items()}  # the valid steps
        values = batch.extras["value"] if "value" in batch.extras else self.batch_values(inputs, valid)
        advantage, returns = self.advantages_and_targets(batch, values)
        samples = {"logp": batch.extras["logp"][valid], "advantage": advantage[valid],
                   "return": returns[valid], "action": batch.action[valid]}
        samples = {k: to_device(v, self.device) for k, v in samples.items()}
        for key, value in inputs.items():
            samples["input_" + key] = value
        if not self.graphed:
            return ppo_update(self.phases, samples, self.config, self.generator)
        if self._graphed_update is None:
            capacity = valid.size  # every step of every trial: the most an iteration yields
            self._graphed_update = [GraphedPPOUpdate(phase, samples, capacity, self.config)
                                    for phase in self.phases]
        return graphed_update(self._graphed_update, samples, self.config, self.generator)

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
        log_std = self.action_log_std().expand_as(out.mean)
        return (gaussian_log_prob(out.mean, log_std, minibatch["action"]), gaussian_entropy(log_std),
                out.value)

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
            self._match_device(phase.optimizer)
        self.generator.set_state(state["generator"])
        self._graphed_update = None

    def _match_device(self, optimizer: torch.optim.Optimizer) -> None:
        """A checkpoint may come from the other path (GPU graphs <-> eager): match this one."""
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.graphed else lr
            group["fused"] = self.graphed or None
            group["capturable"] = self.graphed
            for param in group["params"]:
                step = optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[param]["step"] = (
                        step.to(self.device, torch.float32) if self.graphed else step.cpu())


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


class GraphedActing:
    """An agent's acting step for a fixed number of trials, replayed from one CUDA graph:
    the memory update (``advance``), the model, the action noise and its log-prob.

    The host writes the step's rows and the noise into one pinned buffer; a step is then one
    copy in, a replay and one copy out (action, log-prob, value), where the eager path makes
    a dozen small host-side torch calls. The graph holds the memory it updates (in place);
    parameters are updated in place by the optimiser and ``load_state_dict``, so the graph
    stays valid for the whole run.
    """

    def __init__(self, agent: PPOAgent, rows: int, feature_dim: int):
        device, act_dim = agent.device, agent.suite.action_dim
        split = rows * feature_dim
        self.host_in = torch.zeros(split + rows * act_dim, pin_memory=True)
        self.features = self.host_in[:split].view(rows, feature_dim).numpy()  # written per step
        self.noise = self.host_in[split:].view(rows, act_dim)
        self.device_in = torch.zeros_like(self.host_in, device=device)
        x, noise = self.device_in[:split].view(rows, feature_dim), self.device_in[split:].view(rows, act_dim)
        self.memory = agent.initial_memory(rows)

        def step():
            action, logp, value, memory, latent = agent.acting_step(self.memory, x, noise)
            for key, after in memory.items():
                self.memory[key].copy_(after)
            return torch.cat(pack(action, logp, value), 1), latent

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.device_out, self.latent = step()
        self.host_out = torch.empty(self.device_out.shape, pin_memory=True)

    def __call__(self) -> tuple[np.ndarray, torch.Tensor | None]:
        """(action | log-prob [| value] rows, the model's latent memory on the device)."""
        self.device_in.copy_(self.host_in, non_blocking=True)
        self.graph.replay()
        self.host_out.copy_(self.device_out, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        return self.host_out.numpy().copy(), self.latent  # a copy: the buffer is reused


def compile_model(model: nn.Module) -> bool:
    """torch.compile ``model``'s forward in place (its state_dict keys stay the same);
    False, with a warning, where torch cannot compile for the GPU: no Triton, or no C
    compiler for Triton to build its launchers with (a bare GPU node)."""
    from torch.utils._triton import has_triton
    compilers = [cc for cc in (os.environ.get("CC"), "cc", "gcc", "clang") if cc]
    if not has_triton():
        missing = "Triton"
    elif not any(shutil.which(cc) for cc in compilers):
        missing = "a C compiler (CC, cc, gcc or clang)"
    else:
        # one kernel set per batch shape (acting, minibatch): shape-specialised code is the
        # fastest, and a run meets only a few shapes
        model.compile(dynamic=False)
        # Inductor's advice at every compile: TF32 is left off on purpose (the update must
        # compute what acting computed), and its softmax remark is about its own kernels
        warnings.filterwarnings("ignore", r"TensorFloat32 tensor cores", UserWarning)
        warnings.filterwarnings("ignore", r"\s*Online softmax is disabled", UserWarning)
        return True
    log.warning("torch_compile: %s not found, so the model runs uncompiled (slower GPU "
                "steps, the same model; --set torch_compile=false silences this)", missing)
    return False


def model_inputs(minibatch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's inputs among a minibatch's samples (stored as ``input_<name>``)."""
    return {k[len("input_"):]: v for k, v in minibatch.items() if k.startswith("input_")}


def pack(action: torch.Tensor, logp: torch.Tensor, value: torch.Tensor | None) -> list[torch.Tensor]:
    """An acting step's outputs as columns, for one transfer to the host."""
    return [action, logp[:, None]] + ([] if value is None else [value[:, None]])


def to_device(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
