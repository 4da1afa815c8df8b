"""The two objects a run's configuration splits into: trainer settings and agent hyperparameters.

Users see one flat namespace of keys (``--set key=value``, the package YAMLs, the workflow's
overrides, the ``hyperparameters:`` mapping of a run's config.yaml); :func:`trmrl.config.build_run`
splits it, by field name, into

- the trainer's settings (:class:`TrainerSettings`, or the subclass an agent names in
  ``Agent.settings_class``): *how* a run executes, not what it learns. A resume may change any
  of them, and config.yaml records the new values;
- the agent's hyperparameters (a subclass of :class:`AgentConfig`, ``Agent.config_class``):
  what the agent learns from and how the run is measured. Fixed for a run's life: a resume
  that changes one is refused, naming it.

No key belongs to both. This module imports nothing from the agents or PPO: they build on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from trmrl.errors import ConfigError

# Upper bounds that keep a run within memory (or a budget within reason); a key is checked
# wherever a config or settings class has it. Far above any published setting: they catch
# typos (an extra zero or three), not ambitious runs.
SIZE_LIMITS = {
    "steps": 10**12,  # env steps of a run: the paper's largest budget is 2e7
    "eval_every": 10**12,
    "trials_per_update": 100_000,  # trials held in memory at once by the sampler
    "horizon": 100_000,  # steps per episode
    "episodes_per_trial": 1_000,
    "num_workers": 1_024,
    "checkpoint_every_s": 7 * 86_400,  # a week
    "wm_size": 10_000,  # TrMRL's working memory: attention over it per step
    "layers": 1_000, "heads": 1_024, "d_model": 65_536, "d_ff": 262_144,
    "epochs": 100_000, "minibatch_size": 10**7, "gru_size": 65_536, "latent_dim": 65_536,
}


def check_limits(values: object) -> None:
    """The size limits and finiteness of every field a config or settings object has (also
    where it is built without trmrl.config.build)."""
    for name, limit in SIZE_LIMITS.items():
        value = getattr(values, name, None)
        if value is not None and value > limit:
            raise ConfigError(f"{name}={value!r} is beyond the limit {limit} (a typo? runs "
                              "this large would not fit in memory or time)")
    for name, value in vars(values).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")


@dataclass
class AgentConfig:
    """Hyperparameters every agent has: the trials it learns from and its evaluation.

    The evaluation keys live here, with what the run *is*, rather than with the trainer:
    a run's progress.csv holds one curve, evaluated every ``eval_every`` env steps on the same
    ``eval_tasks`` test tasks; a resume that changed either would splice two protocols into
    one curve, so a resume refuses them like any hyperparameter."""

    eval_every: int = 200_000  # env steps between evaluations on the held-out test tasks
    eval_tasks: int = 20  # test tasks per evaluation
    trials_per_update: int = 20  # trials (one task each) collected per learning iteration
    horizon: int | None = None  # episode length; None: the suite's
    episodes_per_trial: int | None = None  # episodes per trial (K); None: the suite's
    # a named bundle of overrides from the agent's package YAML (`presets`; `trmrl agents`
    # lists them), applied over the env's defaults; "": none
    preset: str = ""

    def validate(self) -> None:
        for name in ("eval_every", "eval_tasks", "trials_per_update"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)!r}")
        for name in ("horizon", "episodes_per_trial"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        check_limits(self)


@dataclass
class TrainerSettings:
    """How a run executes, not what it learns: a resume may change any of these."""

    # the env-step budget: the trainer stops there; a resume may raise it (a finished run
    # then trains on), never below what the run has trained
    steps: int = 20_000_000
    # sampler worker processes (0: step the envs in the trainer's process): where the envs
    # step, not which trials they run (reset seeds do not depend on the number of workers)
    num_workers: int = 0
    # with workers: act for one half of the envs while the workers step the other half. Pays
    # with many envs per worker, costs with few (two policy calls per step instead of one)
    pipeline_sampling: bool = False
    # wall-clock seconds between checkpoints: how much a killed run loses, not what it learns
    checkpoint_every_s: float = 300.0

    def validate(self) -> None:
        if self.steps <= 0:
            raise ConfigError(f"steps must be positive, got {self.steps!r}")
        if self.num_workers < 0:
            raise ConfigError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.checkpoint_every_s < 0:
            raise ConfigError(f"checkpoint_every_s must be >= 0, got {self.checkpoint_every_s!r}")
        check_limits(self)


@dataclass
class AcceleratedSettings(TrainerSettings):
    """The settings of agents whose GPU steps :mod:`trmrl.accel` runs (the PPO agents): two
    switches of how a CUDA device computes the same model, equal up to float rounding."""

    cuda_graphs: bool = True  # on a GPU, replay the minibatch step from a CUDA graph
    # on a GPU with cuda_graphs: torch.compile the model inside the graphs, so they replay
    # fewer, fused kernels (costs ~10-30 s of compiling per batch shape at the start)
    torch_compile: bool = False
