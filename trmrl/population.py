"""Several runs of one PPO agent x env at once: a population of members that differ by seed.

Speed code, kept apart from the algorithm (issue 20): each member is an ordinary
:class:`~trmrl.agents.ppo_agent.PPOAgent` whose ``state_dict`` is what a run trained alone
checkpoints, and :class:`Population` does for every member what the member's own ``act`` and
``update`` do, with the device work of all members in one call:

- acting: each member's host-side features (``step_features``) and action noise (drawn from
  its own generator, exactly the draws it would make alone), then one
  ``torch.func.vmap`` over ``torch.func.functional_call`` of the members' parameters and
  buffers stacked on a leading K axis;
- the update: each member's samples (``timestep_samples``: its own values, advantages and
  targets) and its own minibatch order (its generator), then for every minibatch step one
  vmapped loss, one backward on the sum of the members' losses, a gradient-norm clip per
  member and one AdamW step over the stacked parameters (:class:`StackedAdamW`; the members'
  parameters are the rows of one tensor [K, total], so that a step is a few operations over
  all of them). Members with fewer samples (early terminations) get minibatches padded with
  weight-0 rows; a member with no step left in a phase, or stopped by its KL, is masked:
  its parameters and optimiser state stay untouched. Afterwards each member's parameters,
  AdamW state, lrs and step clocks are written back into the member;
- the scheduled update, for a phase in which every member steps at every step (equal sample
  counts, no KL stop: the released configs): the members' minibatch orders, lrs and AdamW
  bias corrections are laid out as tensors before the first step, so that a step is a
  fixed-shape function with nothing read from the host. On a GPU with ``cuda_graphs`` it is
  replayed from CUDA graphs (:class:`trmrl.accel.GraphedLoop`), several steps a replay, in
  storage kept across updates so that the graphs are captured once.

Which agents can be members: :func:`population_support` (TrMRL, the oracle and memoryless
references, PPO agents of other packages with timestep minibatches; not RL2, whose
whole-trial minibatches run an ``nn.GRU`` that vmap cannot batch, nor VariBAD, MAML or PEARL).
A population pays most where a step is bound by per-operation latency (a GPU, small models);
on a CPU the update is bound by arithmetic that grows with K (measured: benchmarks/README.md).

The algorithm's own code (ppo.py, ppo_agent.py) knows nothing of this: the losses are the
members' own loss objects, run under ``functional_call``. Results equal the members' own
``act``/``update`` up to float rounding (batched kernels sum in another order); a member
whose loss goes non-finite gets its FloatingPointError and is left as it was, the others go on.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, vmap

from trmrl import config as cfg
from trmrl.accel import STEPS_PER_REPLAY, EagerLoop, GraphedLoop, GraphedStep
from trmrl.agents.base import IterationResult
from trmrl.agents.ppo_agent import PPOAgent, to_device
from trmrl.errors import ConfigError
from trmrl.ppo import KL, STATS, UpdatePhase, decay_factor, finish, minibatch_indices
from trmrl.sampling import PolicyOutput, StepInput, TrialBatch

# PPOAgent methods that a population runs as PPOAgent writes them (acting, the update) or that
# a member's checkpoint is made of: an agent that overrides one acts, learns or keeps state in
# ways of its own, which a population would skip
POPULATION_RUNS = ("act", "reset", "update", "update_ppo", "train_iteration", "state_dict",
                   "load_state_dict")
# agents that are not PPO agents, and why they have no population
NOT_PPO = {
    "maml": "MAML-TRPO is not a PPO agent: its meta-gradient (TRPO through an inner step) and "
            "its one-episode trials run its own update",
    "pearl": "PEARL is not a PPO agent: off-policy SAC with a replay buffer and samplers of "
             "its own",
}


def population_support(agent_or_class: PPOAgent | type) -> str | None:
    """None when this agent (class or instance) can be a member of a :class:`Population`,
    else the reason it cannot."""
    cls = agent_or_class if isinstance(agent_or_class, type) else type(agent_or_class)
    name = getattr(cls, "name", cls.__name__)
    if not issubclass(cls, PPOAgent):
        return NOT_PPO.get(name, f"{name} is not a PPO agent (trmrl.agents.ppo_agent.PPOAgent)")
    if cls.trial_minibatches:
        # checked with torch 2.13: vmap(functional_call(nn.GRU)) raises "Batching rule not
        # implemented for aten::gru.input"
        return (f"{name} learns from whole-trial minibatches through a GRU, and torch.func.vmap "
                "has no batching rule for nn.GRU (aten::gru), so its members cannot be stacked")
    overridden = [method for method in POPULATION_RUNS
                  if getattr(cls, method) is not getattr(PPOAgent, method)]
    if overridden:
        return (f"{name} overrides PPOAgent.{', PPOAgent.'.join(overridden)}, which a population "
                "runs as PPOAgent does (e.g. VariBAD's VAE steps after PPO)")
    if not isinstance(agent_or_class, type) and agent_or_class.compiled:
        return (f"{name}'s model is compiled (torch_compile); a population calls the members' "
                "models through torch.func, uncompiled: set torch_compile=false")
    return None


def check_members(agents: list[PPOAgent]) -> None:
    """Raise ConfigError unless ``agents`` can form a population: one class, one suite and
    device, equal hyperparameters, distinct seeds."""
    if not agents:
        raise ConfigError("a population needs at least one member")
    first = agents[0]
    classes = sorted({type(agent).__qualname__ for agent in agents})
    if len(classes) > 1:
        raise ConfigError(f"population members must be of one agent class, got "
                          f"{', '.join(classes)}")
    reason = population_support(first)
    if reason is not None:
        raise ConfigError(f"no population for agent {getattr(first, 'name', '?')}: {reason}")
    reference = cfg.to_dict(first.config)
    for agent in agents[1:]:
        values = cfg.to_dict(agent.config)
        differing = sorted(key for key in reference if values.get(key) != reference[key])
        if differing:
            shown = ", ".join(f"{key} ({reference[key]!r} vs {values.get(key)!r})"
                              for key in differing)
            raise ConfigError(f"population members must have equal hyperparameters and differ "
                              f"only by seed; seed {first.seed} and seed {agent.seed} differ in "
                              f"{shown}")
        if agent.suite.name != first.suite.name or agent.device != first.device:
            raise ConfigError(f"population members must share env and device: seed {first.seed} "
                              f"has {first.suite.name} on {first.device}, seed {agent.seed} has "
                              f"{agent.suite.name} on {agent.device}")
    seeds = [agent.seed for agent in agents]
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ConfigError(f"population members need distinct seeds; repeated: "
                          f"{', '.join(map(str, repeated))}")


class StackedAdamW:
    """torch.optim.AdamW's step (decoupled weight decay; bias corrections in float64, as torch
    computes them for non-capturable optimisers) for K members at once, each with its own
    lrs and step counts. The members' parameters are the rows of one tensor ``flat``
    [K, total], each parameter a range of columns: a step runs a dozen operations on each
    run of adjacent parameters that share an lr and step counts (one to a few per
    optimiser), instead of a dozen per parameter.

    ``spans``: (first column, size) of each of the optimiser's parameters, in its groups'
    order; ``groups``: per parameter group "size" (its parameters), "lr" (a float64 array
    [K]), "weight_decay", "schedule" and "base_lr" (as :func:`trmrl.ppo.make_optimizer`
    makes them); ``betas`` and ``eps``, equal in every group. State: "exp_avg" and
    "exp_avg_sq" [K, columns], the parameters' columns in ``flat``'s order, and the step
    counts [K, parameters] (per parameter, as torch keeps them).
    """

    def __init__(self, flat: torch.Tensor, spans: list[tuple[int, int]],
                 groups: list[dict[str, Any]], betas: tuple[float, float], eps: float,
                 exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, steps: np.ndarray):
        self.flat, self.spans, self.groups = flat, spans, groups
        self.betas, self.eps = betas, eps
        self.exp_avg, self.exp_avg_sq, self.steps = exp_avg, exp_avg_sq, steps
        self.group_of_parameter = np.repeat(np.arange(len(groups)), [g["size"] for g in groups])
        self.order = in_flat_order(spans)
        self.state_first = {}  # parameter -> its first column in the state
        first = 0
        for j in self.order:
            self.state_first[j] = first
            first += spans[j][1]

    def runs(self, stepping: np.ndarray) -> list[list[int]]:
        """Runs of adjacent parameters that share a group, step counts and ``stepping`` mask
        [K, parameters]: [first column, stop, first state column, a parameter of the run]."""
        runs: list[list[int]] = []
        last_key = None
        for j in self.order:
            first, size = self.spans[j]
            key = (self.group_of_parameter[j], self.steps[:, j].tobytes(), stepping[:, j].tobytes())
            if runs and key == last_key and runs[-1][1] == first:
                runs[-1][1] = first + size
            else:
                runs.append([first, first + size, self.state_first[j], j])
                last_key = key
        return runs

    def scalars(self, group: dict[str, Any], lrs: np.ndarray, steps: np.ndarray) -> np.ndarray:
        """The step's per-member scalars (1 - lr x weight decay, -lr / bias correction 1,
        sqrt of bias correction 2) [3, ...] for lrs and step counts (after the increment) of
        any shape, in float64 and rounded to float32 as torch rounds a Python scalar."""
        beta1, beta2 = self.betas
        steps = np.maximum(steps, 1).astype(np.float64)
        # elementwise pow with array exponents: the C library's pow, as Python's float **
        # (a scalar exponent 0.5 would let numpy take sqrt, which may round differently)
        correction1 = 1 - np.power(np.full_like(steps, beta1), steps)
        correction2 = np.power(1 - np.power(np.full_like(steps, beta2), steps),
                               np.full_like(steps, 0.5))
        lrs = np.broadcast_to(np.asarray(lrs, np.float64), steps.shape)
        return np.stack([1 - lrs * group["weight_decay"], -(lrs / correction1),
                         correction2]).astype(np.float32)

    @torch.no_grad()
    def step(self, grads: torch.Tensor, stepping: np.ndarray) -> None:
        """One step of every (member, parameter) where ``stepping`` [K, parameters] is True,
        with the gradients ``grads`` [K, total] (flat, as the parameters). The others keep
        their parameters and state: torch skips a parameter without a gradient, and a
        masked member takes no step at all."""
        beta1, beta2 = self.betas
        self.steps[stepping] += 1
        device, dtype = self.flat.device, self.flat.dtype
        for first, stop, state_first, j in self.runs(stepping):
            rows = stepping[:, j]
            if not rows.any():
                continue
            group = self.groups[self.group_of_parameter[j]]
            # per member (masked rows: any step)
            decay, step_size, correction2 = torch.tensor(
                self.scalars(group, group["lr"], self.steps[:, j]), dtype=dtype,
                device=device)[..., None]
            state = slice(state_first, state_first + stop - first)
            param, grad = self.flat[:, first:stop], grads[:, first:stop]
            exp_avg, exp_avg_sq = self.exp_avg[:, state], self.exp_avg_sq[:, state]
            if rows.all():  # in place: no new memory (each tensor is [K, run] large)
                adamw_update(param, grad, exp_avg, exp_avg_sq, decay, step_size, correction2,
                             beta1, beta2, self.eps)
            else:  # on copies, of which the stepping rows are kept
                keep = torch.from_numpy(rows).to(device)[:, None]
                copies = [tensor.clone() for tensor in (param, exp_avg, exp_avg_sq)]
                adamw_update(copies[0], grad, copies[1], copies[2], decay, step_size, correction2,
                             beta1, beta2, self.eps)
                for tensor, updated in zip((param, exp_avg, exp_avg_sq), copies):
                    tensor.copy_(torch.where(keep, updated, tensor))

    # -- to and from the members' torch optimisers -------------------------------------------
    @classmethod
    def from_optimizers(cls, optimizers: list[torch.optim.Optimizer], flat: torch.Tensor,
                        span_of: list[dict[int, tuple[int, int]]]) -> StackedAdamW:
        """The members' AdamW optimisers (one per member, alike in groups) over ``flat``;
        ``span_of[k]`` maps id(member k's parameter) to its columns (first, size)."""
        template = optimizers[0].param_groups
        hyper = {(tuple(map(float, g["betas"])), float(g["eps"]), bool(g.get("amsgrad")),
                  bool(g.get("maximize"))) for g in template}
        if len(hyper) > 1 or next(iter(hyper))[2:] != (False, False):
            raise ConfigError("a population's AdamW needs equal betas and eps in every group, "
                              "no amsgrad, no maximize")
        betas, eps, _, _ = next(iter(hyper))
        groups = [{"size": len(group["params"]), "weight_decay": float(group["weight_decay"]),
                   "lr": np.array([float(opt.param_groups[g]["lr"]) for opt in optimizers]),
                   "schedule": group.get("schedule", "constant"),
                   "base_lr": float(group.get("base_lr", group["lr"]))}
                  for g, group in enumerate(template)]
        spans = [span_of[0][id(p)] for group in template for p in group["params"]]
        members = [[p for group in opt.param_groups for p in group["params"]] for opt in optimizers]
        order = in_flat_order(spans)

        def moment(name):  # [K, columns]: the members' state, zeros where there is none yet
            return torch.stack([torch.cat([opt.state[params[j]][name].detach().reshape(-1)
                                           if name in opt.state.get(params[j], {})
                                           else flat.new_zeros(params[j].numel()) for j in order])
                                for opt, params in zip(optimizers, members)])

        steps = np.array([[int(float(opt.state[p]["step"])) if "step" in opt.state.get(p, {}) else 0
                           for p in params] for opt, params in zip(optimizers, members)], np.int64)
        return cls(flat, spans, groups, betas, eps, moment("exp_avg"), moment("exp_avg_sq"), steps)

    def write_lrs(self, k: int, optimizer: torch.optim.Optimizer) -> None:
        """Member ``k``'s lrs (as its schedule left them) into its own AdamW's groups."""
        for group, member_group in zip(self.groups, optimizer.param_groups):
            set_lr(member_group, float(group["lr"][k]))

    def write_state(self, k: int, optimizer: torch.optim.Optimizer) -> None:
        """Member ``k``'s moments and step counts into its own AdamW: what the optimiser
        would hold had it taken the same steps itself (no state for a parameter it never
        stepped)."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        on_device = {id(p): bool(group.get("fused") or group.get("capturable"))
                     for group in optimizer.param_groups for p in group["params"]}
        for j, param in enumerate(params):
            steps = int(self.steps[k, j])
            if steps == 0:
                continue
            columns = slice(self.state_first[j], self.state_first[j] + param.numel())
            exp_avg = self.exp_avg[k, columns].view_as(param)
            exp_avg_sq = self.exp_avg_sq[k, columns].view_as(param)
            own = optimizer.state.get(param)
            if own:  # in place: the same tensors, dtype and device
                own["step"].fill_(float(steps))
                own["exp_avg"].copy_(exp_avg)
                own["exp_avg_sq"].copy_(exp_avg_sq)
            else:  # as torch's lazy initialisation makes them: the step count on the CPU,
                # or, for fused or capturable kernels (CUDA graphs), float32 on the device
                step = (torch.tensor(float(steps), dtype=torch.float32, device=param.device)
                        if on_device[id(param)] else torch.tensor(float(steps), dtype=scalar_dtype()))
                optimizer.state[param] = {"step": step,
                                          "exp_avg": exp_avg.clone(),
                                          "exp_avg_sq": exp_avg_sq.clone()}


def in_flat_order(spans: list[tuple[int, int]]) -> list[int]:
    """The parameters (indices into ``spans``) in the order of their columns."""
    return sorted(range(len(spans)), key=lambda j: spans[j][0])


def adamw_update(param, grad, exp_avg, exp_avg_sq, decay, step_size, correction2,
                 beta1: float, beta2: float, eps: float) -> None:
    """torch's single-tensor AdamW step in place, op for op, with the per-member scalars
    ``decay`` (1 - lr x weight decay), ``step_size`` (-lr / bias correction 1) and
    ``correction2`` (sqrt of bias correction 2) as float32 columns [K, 1]."""
    param.mul_(decay)  # exactly param where the weight decay is 0
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = exp_avg_sq.sqrt().div_(correction2).add_(eps)
    # addcdiv's order on the CPU: param + (value * exp_avg) / denom
    param.add_((exp_avg * step_size).div_(denom))


def set_lr(group: dict[str, Any], lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)  # in place, as ppo.set_lrs does
    else:
        group["lr"] = lr


def scalar_dtype() -> torch.dtype:
    """The dtype of torch's AdamW step counts off the GPU graphs: float32, or float64 where
    that is the default dtype."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _Under(nn.Module):
    """``function(*args)`` with ``model`` as a submodule, so that ``functional_call`` of this
    module runs the function with the model's parameters and buffers replaced."""

    def __init__(self, model: nn.Module, function: Callable):
        super().__init__()
        self.model = model
        self.function = function

    def forward(self, *args):
        return self.function(*args)


def member_loss(model: nn.Module, loss: Callable) -> Callable:
    """A phase's loss that reads the value's log std through the model (a loss object holds
    the parameter itself, which ``functional_call`` cannot replace)."""
    def call(minibatch, weight):
        if getattr(loss, "value_log_std", None) is None:
            return loss(minibatch, weight)
        replaced = copy.copy(loss)
        replaced.value_log_std = model.value_log_std
        return replaced(minibatch, weight)
    return call


def split_batch(batch: TrialBatch, parts: int) -> list[TrialBatch]:
    """A member-major batch of ``parts`` x N trials as ``parts`` batches of N (views)."""
    n = batch.num_trials // parts

    def member_rows(k: int) -> TrialBatch:
        rows = slice(k * n, (k + 1) * n)
        fields = {field.name: getattr(batch, field.name)[rows]
                  for field in dataclasses.fields(batch) if field.name != "extras"}
        return TrialBatch(**fields, extras={key: v[rows] for key, v in batch.extras.items()})
    return [member_rows(k) for k in range(parts)]


def step_rows(step: StepInput, rows: slice) -> StepInput:
    return StepInput(**{field.name: getattr(step, field.name)[rows]
                        for field in dataclasses.fields(step)})


class Population:
    """K members of one PPO agent class with equal hyperparameters, acting and learning at
    once. A :class:`~trmrl.sampling.TrialPolicy` over K x N trials, member-major: rows
    k*N .. (k+1)*N - 1 are member k's trials (a sampler must run them in one round)."""

    record_memory: bool = False  # return each row's episodic memory in extras["memory"]

    def __init__(self, agents: list[PPOAgent], *, scheduled: bool | None = None,
                 steps_per_replay: int = STEPS_PER_REPLAY):
        """``scheduled``: run a phase in which every member steps at every minibatch step
        (equal sample counts, no KL stop) from a schedule made before its first step, one
        fixed-shape step function over all members; on a GPU with the members'
        ``cuda_graphs`` it is replayed from CUDA graphs, ``steps_per_replay`` steps a replay.
        Default: where the members use CUDA graphs. Other phases step with per-step masks."""
        check_members(agents)
        self.members = list(agents)
        self.memory: dict[str, torch.Tensor] = {}
        self.rows_per_member = 0
        self.graphed = agents[0].graphed
        self.scheduled = self.graphed if scheduled is None else scheduled
        self.steps_per_replay = steps_per_replay
        self._persistent: dict[Any, torch.Tensor] = {}  # storage that graphs read, kept
        self._loops: dict[int, tuple[Any, EagerLoop]] = {}  # phase -> (its key, its loop)
        self._reached: dict[int, np.ndarray] = {}  # phase -> which parameters it steps
        self._acting_graphs: dict[tuple, _PopulationActingGraph] = {}  # on a GPU
        self._bind()

    @property
    def size(self) -> int:
        return len(self.members)

    def drop(self, index: int) -> PPOAgent:
        """Remove member ``index`` (e.g. one that diverged) and return it; the others go on."""
        if not 0 <= index < self.size:
            raise IndexError(f"member {index} of a population of {self.size}")
        if self.size == 1:
            raise ValueError("a population keeps at least one member")
        agent = self.members.pop(index)
        self._persistent, self._loops = {}, {}  # K changed: new storage, new graphs
        keep = [k for k in range(self.size + 1) if k != index]
        self.memory = {key: value[keep] for key, value in self.memory.items()}
        self._bind()
        return agent

    def _bind(self) -> None:
        """The functions vmapped over the members, built on the first member (all alike),
        and the members' parameters and buffers stacked for them."""
        template = self.members[0]
        self.device = template.device
        self._acting = _Under(template.model, template.acting_columns)
        self._losses = [_Under(template.model, member_loss(template.model, phase.loss))
                        for phase in template.phases]
        self.stack()

    def stack(self) -> None:
        """Read the members' parameters and buffers into tensors [K, ...] (after a member
        changed outside the population, e.g. loaded a checkpoint; reset and update call it).

        The parameters are the rows of one tensor ``self.flat`` [K, total], each a range of
        columns (``self.spans``); ``self.params`` holds them as views [K, *shape] that
        require gradients, leaves of the update's backward."""
        named = [dict(member.model.named_parameters()) for member in self.members]
        buffers = [dict(member.model.named_buffers()) for member in self.members]
        dtypes = {param.dtype for param in named[0].values()}
        if len(dtypes) > 1:
            raise ConfigError(f"a population needs parameters of one dtype, got "
                              f"{sorted(map(str, dtypes))}")
        flat = torch.cat([torch.stack([n[name].detach().reshape(-1) for n in named])
                          for name in named[0]], 1)
        stacked_buffers = {"model." + name: torch.stack([b[name] for b in buffers])
                           for name in buffers[0]}
        if getattr(self, "flat", None) is not None and self.flat.shape == flat.shape and all(
                name in self.buffers and self.buffers[name].shape == value.shape
                for name, value in stacked_buffers.items()):
            with torch.no_grad():  # in place: the update's CUDA graphs read these addresses
                self.flat.copy_(flat)
                for name, value in stacked_buffers.items():
                    self.buffers[name].copy_(value)
            return
        self.flat = flat
        K, first = len(named), 0
        self.spans, self.params = [], {}
        for name, param in named[0].items():
            self.spans.append((first, param.numel()))
            view = self.flat[:, first:first + param.numel()].view(K, *param.shape)
            self.params["model." + name] = view.requires_grad_(True)
            first += param.numel()
        self.buffers = stacked_buffers

    # -- acting: a TrialPolicy over K x N rows ---------------------------------------------
    def reset(self, num_trials: int) -> None:
        if num_trials % self.size:
            raise ValueError(f"{num_trials} trials cannot be split among {self.size} members "
                             "(member-major rows, N per member)")
        self.rows_per_member = n = num_trials // self.size
        self.stack()
        memories = [member.initial_memory(n) for member in self.members]
        self.memory = {key: torch.stack([m[key] for m in memories]) for key in memories[0]}

    @torch.no_grad()
    def act(self, step: StepInput, deterministic: bool = False) -> PolicyOutput:
        n, act_dim, members = self.rows_per_member, self.members[0].suite.action_dim, self.members
        if len(step.obs) != n * self.size:
            raise ValueError(f"{len(step.obs)} rows, but reset was for {self.size} x {n}")
        features, noise = [], []
        for k, member in enumerate(members):  # host side, in each member's own order
            part = step_rows(step, slice(k * n, (k + 1) * n))
            features.append(np.asarray(member.step_features(part), np.float32))
            noise.append(torch.zeros(n, act_dim) if deterministic
                         else torch.randn(n, act_dim, generator=member.generator))
        if self.graphed:
            columns, latent = self._graphed_acting(np.stack(features), torch.stack(noise))
        else:
            x = to_device(np.stack(features), self.device)
            out = vmap(self._acting_call)(self.params, self.buffers, self.memory, x,
                                          torch.stack(noise).to(self.device))
            self.memory = out["memory"]
            columns, latent = out["columns"].reshape(n * self.size, -1).cpu().numpy(), out.get("latent")
        extras = {"logp": columns[:, act_dim]}
        if not members[0].values_from_batch:
            extras["value"] = columns[:, act_dim + 1]
        if self.record_memory and latent is not None:
            extras["memory"] = latent.reshape(n * self.size, -1).cpu().numpy()
        return PolicyOutput(columns[:, :act_dim], extras)

    def _graphed_acting(self, features: np.ndarray, noise: torch.Tensor):
        """The acting step replayed from a CUDA graph per (members, trials): (columns on the
        host [K x N, ...], the latent or None); ``self.memory`` becomes the graph's."""
        key = (self.size, self.rows_per_member, features.shape[-1], self.flat.data_ptr())
        graph = self._acting_graphs.get(key)
        if graph is None:
            self._acting_graphs.clear()  # graphs of an earlier size read storage that is gone
            graph = self._acting_graphs[key] = _PopulationActingGraph(self, features.shape,
                                                                      noise.shape)
        if self.memory is not graph.memory:  # a new trial (reset): its memory goes in
            for name, value in self.memory.items():
                graph.memory[name].copy_(value)
            self.memory = graph.memory
        return graph(features, noise)

    def _acting_call(self, params, buffers, memory, x, noise):
        columns, memory, latent = functional_call(self._acting, (params, buffers),
                                                  (memory, x, noise))
        out = {"columns": columns, "memory": memory}
        if latent is not None:  # vmap returns tensors only
            out["latent"] = latent
        return out

    # -- learning ------------------------------------------------------------------------
    def train_iteration(self, sampler, tasks) -> list[IterationResult | FloatingPointError]:
        """Collect every member's trials on member-major ``tasks`` (K x N: member k's are
        tasks[k*N:(k+1)*N]) in one sampler run, then update each member on its own."""
        if len(tasks) % self.size:
            raise ValueError(f"{len(tasks)} tasks cannot be split among {self.size} members")
        slots = getattr(sampler, "num_envs", len(tasks))
        if slots < len(tasks):
            raise ValueError(f"a population's trials run in one round: the sampler has "
                             f"{slots} env slots for {len(tasks)} trials")
        for member in self.members:
            member.model.eval()
        batch = sampler.run(self, tasks)
        for member in self.members:
            member.model.train()
        batches = split_batch(batch, self.size)
        results = self.update(batches)
        return [result if isinstance(result, FloatingPointError) else
                IterationResult(part.env_steps, part.episode_return, part.episode_success, result)
                for part, result in zip(batches, results)]

    def update(self, batches: list[TrialBatch]) -> list[dict[str, float] | FloatingPointError]:
        """For every member what ``member.update(batch)`` does alone, the minibatch steps of
        all members at once. A member whose loss went non-finite gets a FloatingPointError
        in its slot and is left as it was before this update."""
        if len(batches) != self.size:
            raise ValueError(f"{len(batches)} batches for {self.size} members")
        members, K = self.members, self.size
        config = members[0].config
        self.stack()
        span_of = [{id(p): span for p, span in zip(member.model.parameters(), self.spans)}
                   for member in members]
        generators = [member.generator.get_state() for member in members]

        samples = [member.timestep_samples(batch) for member, batch in zip(members, batches)]
        counts = [int(s["logp"].shape[0]) for s in samples]
        # every member steps at every step of a phase: equal sample counts (and no KL stop)
        scheduled = self.scheduled and len(set(counts)) == 1 and counts[0] > 0
        if scheduled:  # in storage kept across updates, sized for the longest batch
            capacity = max(batch.valid.size for batch in batches)
            stacked = {key: self._stacked_samples(key, [s[key] for s in samples], capacity)
                       for key in samples[0]}
        else:
            stacked = {key: pad_stack([s[key] for s in samples]) for key in samples[0]}
        del samples  # the stacked copy is enough (a full Meta-World batch: ~0.1 GB a member)

        clocks = np.array([[phase.steps for phase in member.phases] for member in members])
        results: list[list[tuple[torch.Tensor, int]]] = [[] for _ in members]
        optimizers = []
        for p, phase in enumerate(members[0].phases):
            adam = StackedAdamW.from_optimizers([m.phases[p].optimizer for m in members],
                                                self.flat, span_of)
            optimizers.append(adam)
            if scheduled and not (phase.checks_kl and config.target_kl > 0):
                adam.exp_avg = self._keep(("exp_avg", p), adam.exp_avg)
                adam.exp_avg_sq = self._keep(("exp_avg_sq", p), adam.exp_avg_sq)
                totals, updates = self._run_phase_scheduled(p, phase, adam, span_of[0],
                                                            counts[0], stacked, clocks[:, p])
            else:
                orders = [minibatch_indices(count, config, member.generator)
                          for count, member in zip(counts, members)]
                totals, updates = self._run_phase(p, phase, adam, span_of[0], orders, stacked,
                                                  clocks[:, p])
            for k in range(K):
                results[k].append((totals[k], int(updates[k])))

        out: list[dict[str, float] | FloatingPointError] = []
        for k, member in enumerate(members):
            try:
                out.append(self._write_back(k, member, optimizers, clocks[k], results[k]))
            except FloatingPointError as error:
                member.generator.set_state(generators[k])
                out.append(error)
                continue
            member.update_observation_statistics(batches[k])
        self.stack()
        return out

    def _run_phase(self, p: int, phase: UpdatePhase, adam: StackedAdamW,
                   span_of: dict[int, tuple[int, int]], orders: list[Iterator[torch.Tensor]],
                   stacked: dict[str, torch.Tensor], clocks: np.ndarray):
        """One phase for every member: steps while any member has a minibatch left and did
        not stop on its KL. Returns the stats summed per member [K, len(STATS)] and the steps."""
        config, K, device = self.members[0].config, self.size, self.device
        totals = torch.zeros(K, len(STATS), device=device)
        updates = np.zeros(K, np.int64)
        running = np.ones(K, bool)
        leaves = list(self.params.values())
        # the optimiser's parameters among the leaves; the columns that clipping covers
        trained = [self.spans.index(span) for span in adam.spans]
        clip_columns = self._clip_columns(phase, span_of)
        loss = self._members_loss(p)
        while True:
            indices: dict[int, torch.Tensor] = {}
            for k in np.flatnonzero(running):
                index = next(orders[k], None)
                if index is None:
                    running[k] = False
                else:
                    indices[int(k)] = index
            if not indices:
                break
            active = np.zeros(K, bool)
            active[list(indices)] = True
            for group in adam.groups:  # each member's lr at its own step clock
                if group["schedule"] == "decay":
                    for k in indices:
                        factor = decay_factor(int(clocks[k]), phase.steps_per_epoch, config)
                        group["lr"][k] = group["base_lr"] * factor
            # the members' minibatches, padded to the longest with weight-0 copies of a sample
            width = max(len(index) for index in indices.values())
            chosen = torch.zeros(len(indices), width, dtype=torch.long)
            weight = torch.zeros(len(indices), width)
            for row, index in enumerate(indices.values()):
                chosen[row], weight[row, :len(index)] = index[0], 1.0
                chosen[row, :len(index)] = index
            who = torch.tensor(list(indices), dtype=torch.long, device=device)
            chosen, weight = chosen.to(device), weight.to(device)
            minibatch = {key: value[who[:, None], chosen] for key, value in stacked.items()}
            params, buffers = self.params, self.buffers
            if len(indices) < K:  # the others compute nothing (their rows get no gradient)
                params = {name: value[who] for name, value in params.items()}
                buffers = {name: value[who] for name, value in buffers.items()}
            losses, stats = loss(params, buffers, minibatch, weight)
            grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
            grads_flat = flat_gradients(leaves, grads, K)
            clip_per_member(grads_flat, config.max_grad_norm, clip_columns)
            # a parameter without a gradient takes no step (torch skips it), unless the phase
            # zeroes gradients in place rather than dropping them: then every parameter the
            # member's AdamW holds steps (it has a gradient, at least from the policy phase
            # before, which reaches them all)
            reached = np.array([phase.keep_zero_grads or grads[i] is not None for i in trained])
            adam.step(grads_flat, active[:, None] & reached[None, :])
            stats = stats.detach()
            totals[who] += stats
            updates[active] += 1
            clocks[active] += 1
            if phase.checks_kl and config.target_kl > 0:
                kls = stats[:, KL].tolist()
                for row, k in enumerate(indices):
                    if kls[row] > 1.5 * config.target_kl:  # as ppo.kl_exceeded, per member
                        running[k] = False
        return totals, updates

    def _run_phase_scheduled(self, p: int, phase: UpdatePhase, adam: StackedAdamW,
                             span_of: dict[int, tuple[int, int]], count: int,
                             stacked: dict[str, torch.Tensor], clocks: np.ndarray):
        """One phase in which every member steps at every minibatch step (``count`` samples
        each, no KL stop), as :meth:`_run_phase` steps it, from a schedule made before the
        first step: each member's minibatches (its own generator's draws) and, per step, its
        lrs and AdamW's bias corrections as device tensors. Each step is then one
        fixed-shape function of tensors, which a GPU replays from CUDA graphs. The last,
        shorter minibatch of an epoch is padded with weight-0 rows. Returns what
        :meth:`_run_phase` returns."""
        config, K, device = self.members[0].config, self.size, self.device
        index, weight = scheduled_minibatches(count, config, [m.generator for m in self.members])
        steps = index.shape[0]
        trained = [self.spans.index(span) for span in adam.spans]
        reached = self._phase_reached(p, phase, trained, stacked, index[0], weight[0])
        stepping = np.broadcast_to(reached, (K, len(reached))).copy()
        runs = [run for run in adam.runs(stepping) if reached[run[3]]]
        # per group the members' lrs at each step [steps, K], at their own step clocks
        lrs = []
        for group in adam.groups:
            if group["schedule"] == "decay":
                factors = {clock: [decay_factor(clock + t, phase.steps_per_epoch, config)
                                   for t in range(steps)] for clock in set(clocks.tolist())}
                lrs.append(group["base_lr"] * np.array([factors[c] for c in clocks.tolist()]).T)
            else:
                lrs.append(np.broadcast_to(group["lr"], (steps, K)))
        scalars = np.empty((steps, len(runs), 3, K), np.float32)
        after = np.arange(1, steps + 1)[:, None]  # step t's count: the start's + t + 1
        for r, (_, _, _, j) in enumerate(runs):
            g = adam.group_of_parameter[j]
            scalars[:, r] = adam.scalars(adam.groups[g], lrs[g],
                                         adam.steps[:, j][None] + after).transpose(1, 0, 2)

        totals = self._keep(("totals", p), torch.zeros(K, len(STATS), device=device))
        totals.zero_()
        key = (p, tuple(tuple(run[:3]) for run in runs), tuple(reached),
               config.minibatch_size, *(t.data_ptr() for t in (
                   self.flat, adam.exp_avg, adam.exp_avg_sq, totals, *stacked.values())))
        if self._loops.get(p, (None,))[0] != key:
            self._loops[p] = (key, self._scheduled_loop(p, phase, adam, span_of, runs,
                                                        stacked, totals))
        self._loops[p][1](index.to(device), weight.to(device),
                          torch.from_numpy(scalars).to(device))

        adam.steps[stepping] += steps
        for group, group_lrs in zip(adam.groups, lrs):
            if group["schedule"] == "decay":  # as the last step set them
                group["lr"] = np.array(group_lrs[-1], np.float64)
        clocks += steps
        return totals.clone(), np.full(K, steps, np.int64)

    def _scheduled_loop(self, p: int, phase: UpdatePhase, adam: StackedAdamW,
                        span_of: dict[int, tuple[int, int]], runs: list[list[int]],
                        stacked: dict[str, torch.Tensor], totals: torch.Tensor) -> EagerLoop:
        """The loop over a scheduled phase's steps: ``step(index [K, size], weight [K, size],
        scalars [runs, 3, K])`` is a minibatch step of every member (loss, gradient, clip,
        AdamW), with nothing read from the host; on a GPU replayed from CUDA graphs."""
        config, K, device = self.members[0].config, self.size, self.device
        leaves = list(self.params.values())
        clip_columns = self._clip_columns(phase, span_of)
        rows = self._keep(("member rows",), torch.arange(K, device=device)[:, None])
        flat, exp_avg, exp_avg_sq = self.flat, adam.exp_avg, adam.exp_avg_sq
        (beta1, beta2), eps = adam.betas, adam.eps
        loss = self._members_loss(p)

        def step(index, weight, scalars):
            minibatch = {key: value[rows, index] for key, value in stacked.items()}
            losses, stats = loss(self.params, self.buffers, minibatch, weight)
            grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
            grads_flat = flat_gradients(leaves, grads, K)
            clip_per_member(grads_flat, config.max_grad_norm, clip_columns)
            with torch.no_grad():
                for r, (first, stop, state_first, _) in enumerate(runs):
                    state = slice(state_first, state_first + stop - first)
                    decay, step_size, correction2 = scalars[r, :, :, None]
                    adamw_update(flat[:, first:stop], grads_flat[:, first:stop],
                                 exp_avg[:, state], exp_avg_sq[:, state], decay, step_size,
                                 correction2, beta1, beta2, eps)
                totals.add_(stats.detach())

        if not self.graphed:
            return EagerLoop(step)
        return GraphedLoop(step, device, restore=lambda: [flat, exp_avg, exp_avg_sq, totals],
                           optimizers=(), steps_per_replay=self.steps_per_replay)

    def _phase_reached(self, p: int, phase: UpdatePhase, trained: list[int],
                       stacked: dict[str, torch.Tensor], index: torch.Tensor,
                       weight: torch.Tensor) -> np.ndarray:
        """Which of the phase optimiser's parameters (``trained``: their leaves) take a step:
        all where the phase keeps zeroed gradients, else those its loss reaches (found once,
        from the gradients of one minibatch: which exist is a property of the loss)."""
        if phase.keep_zero_grads:
            return np.ones(len(trained), bool)
        if p not in self._reached:
            device, K = self.device, self.size
            rows = torch.arange(K, device=device)[:, None]
            index, weight = index.to(device), weight.to(device)
            minibatch = {key: value[rows, index] for key, value in stacked.items()}
            losses, _ = self._members_loss(p)(self.params, self.buffers, minibatch, weight)
            leaves = list(self.params.values())
            grads = torch.autograd.grad(losses.sum(), leaves, allow_unused=True)
            self._reached[p] = np.array([grads[i] is not None for i in trained])
        return self._reached[p]

    def _members_loss(self, p: int) -> Callable:
        """Phase ``p``'s loss of every member at once: (params, buffers, minibatch, weight),
        each stacked on a leading K axis, -> (losses [K], stats [K, len(STATS)])."""
        return vmap(lambda params, buffers, minibatch, weight: functional_call(
            self._losses[p], (params, buffers), (minibatch, weight)))

    def _clip_columns(self, phase: UpdatePhase,
                      span_of: dict[int, tuple[int, int]]) -> torch.Tensor | None:
        """The columns of ``flat`` that the phase's gradient clipping covers (None: all)."""
        clip = sorted({span_of[id(param)] for param in phase.params})
        if sum(size for _, size in clip) == self.flat.shape[1]:
            return None
        return torch.cat([torch.arange(first, first + size)
                          for first, size in clip]).to(self.device)

    def _keep(self, name: Any, value: torch.Tensor) -> torch.Tensor:
        """``value`` in the storage kept under ``name`` (copied in, where the shape, dtype
        and device match), so that CUDA graphs captured on it stay valid."""
        kept = self._persistent.get(name)
        if kept is None or (kept.shape, kept.dtype, kept.device) != (value.shape, value.dtype,
                                                                     value.device):
            self._persistent[name] = value
            return value
        kept.copy_(value)
        return kept

    def _stacked_samples(self, key: str, tensors: list[torch.Tensor],
                         capacity: int) -> torch.Tensor:
        """The members' samples ``tensors`` ([M, ...] each) in kept storage [K, capacity, ...]
        (rows past a member's M hold old samples, which no minibatch reads)."""
        first = tensors[0]
        shape = (len(tensors), capacity, *first.shape[1:])
        kept = self._persistent.get(("samples", key))
        if kept is None or (kept.shape, kept.dtype, kept.device) != (shape, first.dtype,
                                                                     first.device):
            kept = self._persistent[("samples", key)] = first.new_zeros(shape)
        for k, tensor in enumerate(tensors):
            kept[k, :tensor.shape[0]].copy_(tensor)
        return kept

    def _write_back(self, k: int, member: PPOAgent, optimizers: list[StackedAdamW],
                    clocks: np.ndarray,
                    results: list[tuple[torch.Tensor, int]]) -> dict[str, float]:
        """Member ``k``'s update as its own: its lrs and step clocks, finish's metrics and
        lr_decay, then its parameters and AdamW state. Where finish finds the stats non-finite
        it raises, and the member is left as it was."""
        saved = [([float(group["lr"]) for group in phase.optimizer.param_groups], phase.steps)
                 for phase in member.phases]
        for phase, adam, clock in zip(member.phases, optimizers, clocks):
            adam.write_lrs(k, phase.optimizer)
            phase.steps = int(clock)
        try:
            metrics = finish(results, member.phases, member.config)
        except FloatingPointError:
            for phase, (lrs, steps) in zip(member.phases, saved):
                for group, lr in zip(phase.optimizer.param_groups, lrs):
                    set_lr(group, lr)
                phase.steps = steps
            raise
        with torch.no_grad():
            for param, stacked in zip(member.model.parameters(), self.params.values()):
                param.copy_(stacked[k])
        for phase, adam in zip(member.phases, optimizers):
            adam.write_state(k, phase.optimizer)
        return metrics


class _PopulationActingGraph:
    """A population's acting step (the vmapped call) captured in one CUDA graph: the host
    writes the members' features and noise into one pinned buffer; a call is one copy in,
    a replay and one copy out. The graph reads the population's stacked parameters, which
    the population keeps in place, and updates its own memory tensors."""

    def __init__(self, population: Population, features_shape, noise_shape):
        device = population.device
        split = int(np.prod(features_shape))
        self.host_in = torch.zeros(split + int(np.prod(noise_shape)), pin_memory=True)
        self.features = self.host_in[:split].view(features_shape).numpy()
        self.noise = self.host_in[split:].view(noise_shape)
        self.memory = {name: value.clone() for name, value in population.memory.items()}
        rows = features_shape[0] * features_shape[1]

        def step(device_in):
            x = device_in[:split].view(features_shape)
            noise = device_in[split:].view(noise_shape)
            out = vmap(population._acting_call)(population.params, population.buffers,
                                                self.memory, x, noise)
            for name, after in out["memory"].items():
                self.memory[name].copy_(after)
            latent = out.get("latent")
            return out["columns"].reshape(rows, -1), (None if latent is None else latent.clone())

        self.step = GraphedStep(step, [torch.zeros_like(self.host_in, device=device)], device,
                                warmup=2, restore=list(self.memory.values()))
        self.host_out = torch.empty(self.step.output[0].shape, pin_memory=True)

    def __call__(self, features: np.ndarray, noise: torch.Tensor):
        self.features[:] = features
        self.noise.copy_(noise)
        device_out, latent = self.step(self.host_in)
        self.host_out.copy_(device_out, non_blocking=True)
        torch.cuda.current_stream(device_out.device).synchronize()
        return self.host_out.numpy().copy(), latent  # a copy: the buffer is reused


def scheduled_minibatches(num: int, config, generators: list[torch.Generator]):
    """Every member's minibatches of a phase over ``num`` samples, drawn from its generator
    as :func:`trmrl.ppo.minibatch_indices` draws them (a permutation per epoch, cut into
    minibatches): (index [steps, K, size], weight [steps, K, size]); the last minibatch of
    an epoch is padded to ``size`` with its first sample at weight 0."""
    size = config.minibatch_size
    per_epoch = -(-num // size)
    index = torch.empty(config.epochs * per_epoch, len(generators), size, dtype=torch.long)
    for k, generator in enumerate(generators):
        for epoch in range(config.epochs):
            order = torch.randperm(num, generator=generator)
            padded = torch.cat([order, order[(per_epoch - 1) * size].repeat(per_epoch * size - num)])
            index[epoch * per_epoch:(epoch + 1) * per_epoch, k] = padded.view(per_epoch, size)
    weight = torch.zeros(per_epoch * size)
    weight[:num] = 1
    weight = weight.view(1, per_epoch, 1, size).expand(config.epochs, -1, len(generators), -1)
    return index, weight.reshape(index.shape)


def flat_gradients(leaves: list[torch.Tensor], grads, K: int) -> torch.Tensor:
    """The gradients of the stacked parameters as one tensor [K, total] (zeros for None)."""
    return torch.cat([(torch.zeros_like(leaf) if grad is None else grad).reshape(K, -1)
                      for leaf, grad in zip(leaves, grads)], 1)


def clip_per_member(grads_flat: torch.Tensor, max_norm: float,
                    columns: torch.Tensor | None) -> None:
    """``nn.utils.clip_grad_norm_`` for each member's row of ``grads_flat`` [K, total], in
    place, over ``columns`` (None: all); nothing where ``max_norm`` is 0."""
    if max_norm <= 0:
        return
    clipped = grads_flat if columns is None else grads_flat.index_select(1, columns)
    norm = torch.linalg.vector_norm(clipped, 2, dim=1, keepdim=True)
    scale = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    if columns is None:
        grads_flat.mul_(scale)
    else:
        grads_flat.index_copy_(1, columns, clipped * scale)


def pad_stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Tensors [M_k, ...] as one [K, max M_k, ...], zeros after each one's rows (never read
    as samples: padded minibatch rows repeat a real sample with weight 0)."""
    longest = max(t.shape[0] for t in tensors)
    out = tensors[0].new_zeros((len(tensors), longest, *tensors[0].shape[1:]))
    for k, tensor in enumerate(tensors):
        out[k, :tensor.shape[0]] = tensor
    return out
