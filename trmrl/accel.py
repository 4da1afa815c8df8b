"""Speed on a GPU, kept apart from the algorithms: CUDA graphs, torch.compile, optimiser
state on the device, TF32 and host copies for acting.

An agent decides once, when it is built, whether a step runs eagerly (op by op, any device)
or accelerated (captured once in a CUDA graph and replayed: the same arithmetic without a
kernel launch per op), and keeps the matching object; its algorithm code calls that object
and never asks which device it is on. tests/test_cuda.py checks that both give the same
numbers.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import shutil
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from trmrl.ppo import (STATS, PPOConfig, PPOUpdate, UpdatePhase, decay_factor, finish, kl_exceeded,
                       minibatch_indices)

log = logging.getLogger(__name__)


# minibatch steps per CUDA-graph replay of an update: enough that the host's launch of a replay
# is small beside the steps' GPU time, few enough that a graph stays small
STEPS_PER_REPLAY = 16


def uses_cuda_graphs(device: torch.device, enabled: bool) -> bool:
    """Whether an agent on ``device`` with the option ``cuda_graphs`` replays graphs."""
    return device.type == "cuda" and enabled


# -- CUDA graphs ------------------------------------------------------------------------------
def _nothing() -> None:
    pass


class GraphedStep:
    """``step(*inputs)`` captured once in a CUDA graph on static copies of ``example``; a call
    copies its inputs in, replays and returns what the captured call returned (static
    tensors, overwritten by the next replay).

    Capture first runs ``warmup`` steps on a side stream (autograd, the optimisers' state and
    cuBLAS workspaces get allocated outside the graph, as capture requires), each after
    ``before_step()`` (e.g. dropping gradients), which runs once more before the capture.
    Those steps change the tensors in ``restore``, the ``optimizers``' states and the CUDA
    generator: all are put back in place afterwards, keeping every address the graph reads.
    """

    def __init__(self, step: Callable[..., Any], example: Sequence[torch.Tensor],
                 device: torch.device, *, warmup: int = 3, before_step: Callable[[], None] = _nothing,
                 restore: Sequence[torch.Tensor] = (), optimizers: Sequence[torch.optim.Optimizer] = ()):
        self.inputs = [x.detach().clone() for x in example]
        saved = [t.detach().clone() for t in restore]
        saved_states = [copy.deepcopy(opt.state_dict()["state"]) for opt in optimizers]
        rng_state = torch.cuda.get_rng_state(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup):
                before_step()
                step(*self.inputs)
        torch.cuda.current_stream(device).wait_stream(side)
        before_step()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = step(*self.inputs)
        with torch.no_grad():  # undo the warm-up steps in place
            for tensor, value in zip(restore, saved):
                tensor.copy_(value)
            for opt, old_state in zip(optimizers, saved_states):
                for index, state in opt.state_dict()["state"].items():
                    for name, value in state.items():
                        if isinstance(value, torch.Tensor):
                            old = old_state.get(index, {}).get(name)
                            value.copy_(old if old is not None else torch.zeros_like(value))
        torch.cuda.set_rng_state(rng_state, device)

    def __call__(self, *inputs: torch.Tensor):
        for static, value in zip(self.inputs, inputs):
            static.copy_(value, non_blocking=True)
        self.graph.replay()
        return self.output


class EagerLoop:
    """Steps op by op: ``step(*row)`` for each row of the inputs (each [steps, ...]), each
    after ``before_step()``, which runs once more at the end (no gradient outlives the loop)."""

    def __init__(self, step: Callable[..., None], before_step: Callable[[], None] = _nothing):
        self.step, self.before_step = step, before_step

    def __call__(self, *inputs: torch.Tensor) -> None:
        for row in zip(*inputs):
            self.before_step()
            self.step(*row)
        self.before_step()

    def reset(self) -> None:
        """Nothing is captured."""


class GraphedLoop(EagerLoop):
    """The same steps replayed from CUDA graphs (:class:`GraphedStep`), captured at the first
    call and again whenever ``key()`` changes (the storage the step reads moved) or after
    ``reset`` (new optimiser state).

    One replay runs ``steps_per_replay`` consecutive rows (the graph holds that many steps,
    ``before_step()`` between them), so that the host launches one graph per chunk rather
    than one per step; the rows left over after the last full chunk replay a one-row graph.
    The arithmetic is the same as row by row, in the same order.
    """

    def __init__(self, step: Callable[..., None], device: torch.device,
                 before_step: Callable[[], None] = _nothing, *, restore: Callable[[], list[torch.Tensor]],
                 optimizers: Sequence[torch.optim.Optimizer], key: Callable[[], Any] = _nothing,
                 steps_per_replay: int = 1):
        super().__init__(step, before_step)
        if steps_per_replay < 1:
            raise ValueError(f"steps_per_replay must be at least 1, got {steps_per_replay}")
        self.device, self.restore, self.optimizers, self.key = device, restore, optimizers, key
        self.steps_per_replay = steps_per_replay
        self.graphs: dict[int, GraphedStep] = {}  # rows per replay -> its graph
        self.graph_key = None

    def __call__(self, *inputs: torch.Tensor) -> None:
        key = self.key()
        if self.graph_key != key:
            self.graphs = {}  # free the old graphs' memory first
            self.graph_key = key
        total, chunk = inputs[0].shape[0], self.steps_per_replay
        full = total - total % chunk if total >= chunk else 0
        for start in range(0, full, chunk):
            self._graph(chunk, inputs)(*(x[start:start + chunk] for x in inputs))
        for start in range(full, total):
            self._graph(1, inputs)(*(x[start:start + 1] for x in inputs))

    def _graph(self, rows: int, inputs: Sequence[torch.Tensor]) -> GraphedStep:
        graph = self.graphs.get(rows)
        if graph is None:
            def steps(*block):
                for i in range(rows):
                    if i:
                        self.before_step()
                    self.step(*(x[i] for x in block))
            # warm-up data: the first real rows (finite, as the steps expect); the warm-up
            # steps are undone before the capture
            example = [x[:rows].clone() for x in inputs]
            graph = self.graphs[rows] = GraphedStep(
                steps, example, self.device, before_step=self.before_step,
                restore=self.restore(), optimizers=self.optimizers)
        return graph

    def reset(self) -> None:
        self.graphs = {}


class GraphedPPOUpdate(PPOUpdate):
    """:class:`~trmrl.ppo.PPOUpdate` with each phase's minibatch steps replayed from CUDA
    graphs (several steps a replay where no KL stop can end the phase), captured at the
    first call (after any resume) and again after ``reset``.

    Samples are copied into static buffers of a fixed capacity (the most timesteps an
    iteration can produce); each step gathers one minibatch by index, so the last, shorter
    minibatch of an epoch is padded with weight-0 rows.
    """

    def __init__(self, phases: list[UpdatePhase], config: PPOConfig):
        super().__init__(phases, config)
        self.graphs: list[_PhaseGraph] | None = None

    def __call__(self, samples: dict[str, torch.Tensor], generator: torch.Generator,
                 capacity: int) -> dict[str, float]:
        if self.graphs is None:
            self.graphs = [_PhaseGraph(phase, samples, capacity, self.config) for phase in self.phases]
        return finish([graph(samples, generator) for graph in self.graphs], self.phases, self.config)

    def reset(self) -> None:
        self.graphs = None


class _PhaseGraph:
    """One phase's minibatch steps (forward, backward, optimiser) replayed from CUDA graphs:
    where no KL stop can end the phase, ``STEPS_PER_REPLAY`` steps a replay, each step
    setting its scheduled lrs on the device first; with a KL stop, one step a replay and the
    host checks the KL after each."""

    def __init__(self, phase: UpdatePhase, example: dict[str, torch.Tensor], capacity: int,
                 config: PPOConfig):
        device = example["logp"].device
        self.config, self.phase = config, phase
        optimizer, params = phase.optimizer, phase.params
        self.buffers = {k: torch.zeros((capacity, *v.shape[1:]), dtype=v.dtype, device=device)
                        for k, v in example.items()}
        self.total = torch.zeros(len(STATS), device=device)
        self.last = torch.zeros(len(STATS), device=device)  # the latest step's stats
        optimised = [p for group in optimizer.param_groups for p in group["params"]]
        # the groups whose lr changes every step ("decay"); each step's lrs come as a row
        self.scheduled = [group for group in optimizer.param_groups
                          if group.get("schedule", "constant") == "decay"]
        if phase.keep_zero_grads:  # static gradients, zeroed in the graph (see UpdatePhase)
            for param in optimised:
                if param.grad is None:
                    param.grad = torch.zeros_like(param)

        def step(index, weight, lrs):
            if phase.keep_zero_grads:
                optimizer.zero_grad(set_to_none=False)
            for i, group in enumerate(self.scheduled):
                group["lr"].copy_(lrs[i])  # a device tensor (OptimizerPlacement.tensor_lrs)
            minibatch = {k: v[index] for k, v in self.buffers.items()}
            loss, stats = phase.loss(minibatch, weight)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            self.total.add_(stats)
            self.last.copy_(stats)

        def drop_grads():
            if not phase.keep_zero_grads:
                optimizer.zero_grad(set_to_none=True)

        self.loop = GraphedLoop(step, device, drop_grads,
                                restore=lambda: [*optimised, self.total, self.last],
                                optimizers=[optimizer], steps_per_replay=STEPS_PER_REPLAY)

    def __call__(self, samples: dict[str, torch.Tensor],
                 generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """(the summed stats, the steps taken) of one phase over ``samples``."""
        num = samples["logp"].shape[0]
        if num > self.buffers["logp"].shape[0]:
            raise ValueError(f"{num} samples exceed the graph's capacity {self.buffers['logp'].shape[0]}")
        for key, buffer in self.buffers.items():
            buffer[:num].copy_(samples[key])
        config, phase = self.config, self.phase
        size = config.minibatch_size
        chunks, weights = [], []
        for idx in minibatch_indices(num, config, generator):
            weight = torch.ones(size)
            if len(idx) < size:  # pad with row 0 at weight 0
                weight[len(idx):] = 0
                idx = torch.cat([idx, torch.zeros(size - len(idx), dtype=idx.dtype)])
            chunks.append(idx)
            weights.append(weight)
        # each step's scheduled lrs, as set_lrs would set them at that step (rounded to the
        # float32 of the lr tensors)
        lrs = torch.tensor([[group["base_lr"] * decay_factor(phase.steps + t, phase.steps_per_epoch,
                                                            config) for group in self.scheduled]
                            for t in range(len(chunks))], dtype=torch.float32)
        device = self.total.device
        all_index = torch.stack(chunks).to(device, non_blocking=True)
        all_weight = torch.stack(weights).to(device, non_blocking=True)
        lrs = lrs.reshape(len(chunks), len(self.scheduled)).to(device, non_blocking=True)
        self.total.zero_()
        if not (phase.checks_kl and config.target_kl > 0):  # every step runs: in chunks
            self.loop(all_index, all_weight, lrs)
            phase.steps += len(chunks)
            return self.total.clone(), len(chunks)
        updates = 0
        for i in range(len(chunks)):
            self.loop(all_index[i:i + 1], all_weight[i:i + 1], lrs[i:i + 1])
            updates += 1
            phase.steps += 1
            if kl_exceeded(self.last, config):
                break
        return self.total.clone(), updates


class GraphedActing:
    """A PPO agent's acting step replayed from one CUDA graph per number of trials: the
    memory update (``advance``), the model, the action noise and its log-prob.

    The host writes the step's rows and the noise into one pinned buffer; a step is then one
    copy in, a replay and one copy out, where the eager path makes a dozen small host-side
    torch calls. Each graph holds the memory it updates (in place); parameters are updated
    in place by the optimiser and ``load_state_dict``, so graphs stay valid for the whole run.
    """

    def __init__(self, agent):
        self.agent = agent
        self.graphs: dict[int, _ActingGraph] = {}

    def __call__(self, memory: dict[str, torch.Tensor], features: np.ndarray, noise: torch.Tensor):
        """(action | log-prob [| value] rows on the host, the latent, the memory after it)."""
        rows = len(features)
        graph = self.graphs.get(rows)
        if graph is None:
            graph = self.graphs[rows] = _ActingGraph(self.agent, rows, features.shape[1])
        if memory is not graph.memory:  # a new trial (reset): its memory goes in
            for key, value in memory.items():
                graph.memory[key].copy_(value)
        graph.features[:] = features
        graph.noise.copy_(noise)
        out, latent = graph()
        return out, latent, graph.memory


class _ActingGraph:
    def __init__(self, agent, rows: int, feature_dim: int):
        device, act_dim = agent.device, agent.suite.action_dim
        split = rows * feature_dim
        self.host_in = torch.zeros(split + rows * act_dim, pin_memory=True)
        self.features = self.host_in[:split].view(rows, feature_dim).numpy()  # written per step
        self.noise = self.host_in[split:].view(rows, act_dim)
        self.memory = agent.initial_memory(rows)

        @torch.no_grad()
        def step(device_in):
            x, noise = device_in[:split].view(rows, feature_dim), device_in[split:].view(rows, act_dim)
            columns, memory, latent = agent.acting_columns(self.memory, x, noise)
            for key, after in memory.items():
                self.memory[key].copy_(after)
            return columns, latent

        self.step = GraphedStep(step, [torch.zeros_like(self.host_in, device=device)], device, warmup=2)
        self.host_out = torch.empty(self.step.output[0].shape, pin_memory=True)

    def __call__(self) -> tuple[np.ndarray, torch.Tensor | None]:
        device_out, latent = self.step(self.host_in)
        self.host_out.copy_(device_out, non_blocking=True)
        torch.cuda.current_stream(device_out.device).synchronize()
        return self.host_out.numpy().copy(), latent  # a copy: the buffer is reused


# -- optimisers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class OptimizerPlacement:
    """Which kernels step an optimiser and where its state lives; :meth:`place` also moves a
    loaded state (a checkpoint from the other path: GPU graphs <-> eager, GPU <-> CPU)."""

    device: torch.device
    fused: bool = False  # one fused kernel per step on a GPU instead of a few per tensor
    capturable: bool = False  # step counts on the device, as a CUDA graph needs
    tensor_lrs: bool = False  # lrs as device tensors, which a graph reads (schedules set them in place)

    @classmethod
    def for_graphs(cls, device: torch.device, graphed: bool) -> OptimizerPlacement:
        """Fused, capturable, tensor lrs with CUDA graphs; torch's defaults without."""
        return cls(device, fused=graphed, capturable=graphed, tensor_lrs=graphed)

    def options(self) -> dict[str, bool]:
        """Keyword arguments for the optimiser's constructor."""
        return {"fused": True, "capturable": self.capturable} if self.fused else {}

    def place(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for group in optimizer.param_groups:
            lr = float(group["lr"])
            group["lr"] = torch.tensor(lr, device=self.device) if self.tensor_lrs else lr
            group["fused"] = self.fused or None
            group["capturable"] = self.capturable
            for param in group["params"]:
                step = optimizer.state.get(param, {}).get("step")
                if isinstance(step, torch.Tensor):
                    optimizer.state[param]["step"] = (
                        step.to(self.device, torch.float32) if self.capturable else step.cpu())
        return optimizer


# -- compiling, precision, random numbers, host copies ------------------------------------------
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


@contextlib.contextmanager
def tf32(device: torch.device, *, matmul: bool | None = None, cudnn: bool | None = None):
    """TF32 on (True) or off (False) for cuBLAS matrix products and cuDNN ops inside the
    block, on a GPU (None: left as it is); the process-wide settings are restored after it.
    A CUDA graph keeps the kernels chosen at its capture."""
    if device.type != "cuda":
        yield
        return
    backends = [(torch.backends.cuda.matmul, matmul), (torch.backends.cudnn, cudnn)]
    previous = [backend.allow_tf32 for backend, _ in backends]
    for backend, allow in backends:
        if allow is not None:
            backend.allow_tf32 = allow
    try:
        yield
    finally:
        for (backend, _), value in zip(backends, previous):
            backend.allow_tf32 = value


def float32_cudnn(device: torch.device):
    """cuDNN runs float32 RNNs in TF32 by default on Ampere and later GPUs, while the acting
    step (cuBLAS) is full float32: without this, acting and learning would disagree by
    ~1e-3 and the PPO ratio would not start at 1. Scoped to the call (this package has no
    other cuDNN op)."""
    return tf32(device, cudnn=False)


class StepNoise:
    """Standard normal noise for a gradient step: from a CPU generator on the CPU, from the
    device's default generator on a GPU (what a CUDA graph can replay), seeded here."""

    def __init__(self, device: torch.device, cpu_generator: torch.Generator, seed: int):
        self.device, self.cpu_generator = device, cpu_generator
        self.on_device = device.type == "cuda"
        if self.on_device:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)

    def __call__(self, *shape: int) -> torch.Tensor:
        if self.on_device:
            return torch.randn(shape, device=self.device)
        return torch.randn(shape, generator=self.cpu_generator)

    def device_state(self) -> torch.Tensor | None:
        """The device generator's state for a checkpoint (None on the CPU: the CPU
        generator is the caller's and saved with it)."""
        return torch.cuda.get_rng_state(self.device) if self.on_device else None

    def set_device_state(self, state: torch.Tensor | None) -> None:
        if self.on_device and state is not None:
            torch.cuda.set_rng_state(state, self.device)


class HostCopy:
    """A CPU copy of a module that learns on a GPU, for acting: a few rows per step cost less
    on the CPU than a GPU round trip. Refreshed on use after :meth:`mark_stale`."""

    def __init__(self, module: nn.Module):
        self.module = module
        self.copy = copy.deepcopy(module).cpu().requires_grad_(False)
        self.stale = False

    def __call__(self) -> nn.Module:
        if self.stale:
            self.copy.load_state_dict(self.module.state_dict())
            self.stale = False
        return self.copy

    def mark_stale(self) -> None:
        self.stale = True


class SameModule(HostCopy):
    """The module itself, where it already lives on the CPU."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self) -> nn.Module:
        return self.module

    def mark_stale(self) -> None:
        pass


def acting_module(module: nn.Module, device: torch.device) -> HostCopy:
    """What acts for ``module`` (on ``device``): itself on a CPU, a :class:`HostCopy` else."""
    return SameModule(module) if device.type == "cpu" else HostCopy(module)


class BiasMvLinear(torch.autograd.Function):
    """x W^T + b for x [M, in], whose bias gradient is a matrix-vector product: on a GPU a
    column sum of a [4096, 300] gradient as a reduction kernel costs a few times more."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        return torch.addmm(bias, x, weight.t())

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad_x = grad @ weight if needs[0] else None
        grad_weight = grad.t() @ x if needs[1] else None
        grad_bias = torch.mv(grad.t(), grad.new_ones(grad.shape[0])) if needs[2] else None
        return grad_x, grad_weight, grad_bias


def tensor_core_width(width: int) -> int:
    """``width`` rounded up to a multiple of 4: float32 rows of 16-byte multiples let a GPU's
    matrix products use tensor cores (an input of 31 floats per row would not)."""
    return -(-width // 4) * 4
