"""On-policy Gaussian agents trained with :mod:`trmrl.ppo` (TrMRL and the reference agents).

A subclass supplies a model (``forward(inputs) -> (action mean, value)`` where ``inputs`` is
a dict of tensors, a ``log_std`` parameter, and its policy/value parameter split) and two
views of the same per-step inputs: ``step_inputs`` while acting (updating its memory) and
``batch_inputs`` for a whole batch of trials when learning. The two must agree exactly; the
tests check that the PPO ratio is 1 before the first gradient step.

Two switches for recurrent agents (RL2): ``trial_minibatches = True`` makes PPO's samples
whole trials (the model gets [trials, T, ...] inputs and returns [trials, T] outputs) instead
of timesteps, and a model that sets ``last_state`` in its acting forward has that state
handed to ``carry_state`` after every step, to feed into the next one
(:class:`RecurrentPPOAgent` keeps it, for RL2 and VariBAD).
"""

from __future__ import annotations

import abc
import copy
import logging
import os
import shutil
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from trmrl.agents.base import Agent, IterationResult
from trmrl.ppo import (GraphedPPOUpdate, PPOConfig, gae, gaussian_entropy, gaussian_log_prob,
                       make_optimizer, ppo_update)
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch

log = logging.getLogger(__name__)


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


class PPOAgent(Agent):
    config: PPOConfig
    # PPO minibatches of whole trials ([trials, T] samples, padding weighted 0) instead of
    # timesteps: for models that must see a trial from its start (recurrent ones)
    trial_minibatches: bool = False

    def __init__(self, config: PPOConfig, suite, device, seed):
        super().__init__(config, suite, device, seed)
        torch.manual_seed(seed)  # parameter initialisation
        self.model = self.build_model().to(device)
        self.graphed = device.type == "cuda" and config.cuda_graphs
        self.compiled = self.graphed and config.torch_compile and compile_model(self.model)
        self.optimizer = make_optimizer(self.model.policy_parameters(),
                                        self.model.value_parameters(), config, self.graphed)
        self._graphed_update = None  # captured on the first update (after any resume)
        self._graphed_forwards: dict[int, GraphedForward] = {}  # acting, one per batch size
        # one CPU generator for action noise and minibatch order: identical runs on CPU
        self.generator = torch.Generator().manual_seed(seed)

    @abc.abstractmethod
    def build_model(self) -> nn.Module: ...

    @abc.abstractmethod
    def step_inputs(self, step: StepInput) -> dict[str, torch.Tensor]:
        """Model inputs for this step, each [N, ...] on ``self.device``; updates the memory."""

    @abc.abstractmethod
    def batch_inputs(self, batch: TrialBatch) -> dict[str, torch.Tensor]:
        """Model inputs for every step of the batch, each [N, T, ...] on ``self.device``."""

    # -- acting ---------------------------------------------------------------------------
    @torch.no_grad()
    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        inputs = self.step_inputs(step)
        if self.graphed:
            rows = len(step.obs)
            if rows not in self._graphed_forwards:
                self._graphed_forwards[rows] = GraphedForward(self.model, inputs)
            mean, value, memory, state = self._graphed_forwards[rows](inputs)
        else:
            mean, value = self.model(inputs)
            memory = getattr(self.model, "last_memory", None)
            state = getattr(self.model, "last_state", None)
        if state is not None:
            self.carry_state(state)
        # one device->host transfer per step; the noise and log-prob are cheap on the CPU
        act_dim = mean.shape[1]
        out = torch.cat([mean, self.model.log_std.expand_as(mean), value[:, None]], 1).cpu()
        mean, log_std, value = out[:, :act_dim], out[:, act_dim:-1], out[:, -1]
        if deterministic:
            action = mean
        else:
            action = mean + log_std.exp() * torch.randn(mean.shape, generator=self.generator)
        extras = {"logp": gaussian_log_prob(mean, log_std, action).numpy(), "value": value.numpy()}
        if self.record_memory and memory is not None:
            extras["memory"] = memory.cpu().numpy()
        return PolicyOutput(action.numpy(), extras)

    def acting_view(self) -> PPOAgent:
        """This agent with a memory of its own, for a pipelined sampler's second half of envs.

        A shallow copy shares the model, the CUDA graphs and the action-noise generator;
        ``reset``, ``step_inputs`` and ``carry_state`` bind new memory tensors instead of
        writing into the old ones, so the two memories stay apart."""
        return copy.copy(self)

    def carry_state(self, state: torch.Tensor) -> None:
        """Keep the model's new recurrent state (``model.last_state``) for the next step.

        ``state`` may be a CUDA graph's output buffer, overwritten by its next replay."""
        raise NotImplementedError(f"{type(self).__name__}'s model sets last_state: "
                                  "override carry_state to keep it")

    # -- learning -------------------------------------------------------------------------
    def train_iteration(self, sampler, tasks) -> IterationResult:
        self.model.eval()
        batch = sampler.run(self, tasks)
        self.model.train()
        metrics = self.update(batch)
        return IterationResult(batch.env_steps, batch.episode_return, batch.episode_success, metrics)

    def update(self, batch: TrialBatch) -> dict[str, float]:
        advantage, returns = gae(batch.reward, batch.extras["value"], batch.valid,
                                 self.config.gamma, self.config.gae_lambda)
        valid = batch.valid
        params = list(self.model.parameters())
        if self.trial_minibatches:  # whole trials, [N, T, ...]; the padding weighs 0
            samples = {"logp": batch.extras["logp"], "advantage": advantage, "return": returns,
                       "action": batch.action}
            # zeros after each trial's end, whatever is there: weight-0 terms stay finite
            samples = {k: np.where(valid.reshape(*valid.shape, *[1] * (v.ndim - 2)), v, 0).astype(v.dtype)
                       for k, v in samples.items()}
            samples["weight"] = valid.astype(np.float32)
            samples = {k: to_device(v, self.device) for k, v in samples.items()}
            for key, value in self.batch_inputs(batch).items():
                samples["input_" + key] = value
            # eager even on a GPU: a minibatch step is a few large kernels (one GRU call)
            return ppo_update(self.evaluate, samples, self.optimizer, params, self.config,
                              self.generator)
        samples = {"logp": batch.extras["logp"][valid], "advantage": advantage[valid],
                   "return": returns[valid], "action": batch.action[valid]}
        samples = {k: to_device(v, self.device) for k, v in samples.items()}
        mask = to_device(valid, self.device)
        for key, value in self.batch_inputs(batch).items():
            samples["input_" + key] = value[mask]
        if not self.graphed:
            return ppo_update(self.evaluate, samples, self.optimizer, params, self.config,
                              self.generator)
        if self._graphed_update is None:
            capacity = valid.size  # every step of every trial: the most an iteration yields
            self._graphed_update = GraphedPPOUpdate(self.evaluate, samples, capacity,
                                                    self.optimizer, params, self.config)
        return self._graphed_update(samples, self.generator)

    def evaluate(self, minibatch: dict[str, torch.Tensor]):
        """(log-prob, entropy, value) of a minibatch of samples under the current model."""
        inputs = {k[len("input_"):]: v for k, v in minibatch.items() if k.startswith("input_")}
        mean, value = self.model(inputs)
        log_std = self.model.log_std.expand_as(mean)
        return gaussian_log_prob(mean, log_std, minibatch["action"]), gaussian_entropy(log_std), value

    # -- checkpoints ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        # a checkpoint may come from the other path (GPU graphs <-> eager): match this one
        for group in self.optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.graphed else lr
            group["fused"] = self.graphed or None
            group["capturable"] = self.graphed
            for param in group["params"]:
                step = self.optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    self.optimizer.state[param]["step"] = (
                        step.to(self.device, torch.float32) if self.graphed else step.cpu())
        self._graphed_update = None


class RecurrentPPOAgent(PPOAgent):
    """A PPO agent whose model carries a recurrent state [trials, model.state_size] across
    the episodes of a trial (RL2's GRUs, VariBAD's encoder): zeros at each trial's start,
    fed with the working memory (s_t, a_{t-1}, r_{t-1}, d_t) at every step."""

    def reset(self, num_trials: int) -> None:
        self.state = torch.zeros(num_trials, self.model.state_size, device=self.device)

    def step_inputs(self, step: StepInput) -> dict[str, torch.Tensor]:
        return {"x": to_device(step.augmented(), self.device), "state": self.state}

    def carry_state(self, state: torch.Tensor) -> None:
        self.state = state.clone()  # a copy: a CUDA graph overwrites its output buffer


class GraphedForward:
    """The model's forward pass for a fixed batch size, replayed from a CUDA graph.

    Parameters are updated in place by the optimiser and by ``load_state_dict``, so the
    graph stays valid for the whole run.
    """

    def __init__(self, model: nn.Module, example: dict[str, torch.Tensor]):
        self.inputs = {k: v.clone() for k, v in example.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(2):
                model(self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph):
            self.mean, self.value = model(self.inputs)
            self.memory = getattr(model, "last_memory", None)
            self.state = getattr(model, "last_state", None)

    def __call__(self, inputs: dict[str, torch.Tensor]):
        for key, value in inputs.items():
            self.inputs[key].copy_(value)
        self.graph.replay()
        return self.mean, self.value, self.memory, self.state


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


def to_device(array: np.ndarray, device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)
