"""Agents by name. Every agent implements :class:`trmrl.agents.base.Agent`."""

from __future__ import annotations

import importlib

from trmrl.agents.base import Agent, IterationResult, RunConfig
from trmrl.errors import ConfigError

# name -> "module:Class"; order = the order of tables and legends
_REGISTRY: dict[str, str] = {
    "trmrl": "trmrl.agents.trmrl:TrMRLAgent",
    "rl2": "baselines.rl2:RL2Agent",
    "varibad": "baselines.varibad:VariBADAgent",
    "maml": "baselines.maml:MAMLAgent",
    "pearl": "baselines.pearl:PEARLAgent",
    "oracle": "trmrl.agents.reference:OracleAgent",
    "memoryless": "trmrl.agents.reference:MemorylessAgent",
}
# agents of the design that are not implemented yet: named in errors, never silently missing
PLANNED: tuple[str, ...] = ()
AGENT_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def check_agent_name(name: str) -> str:
    if name in _REGISTRY:
        return name
    if name in PLANNED:
        raise ConfigError(f"agent {name!r} is not implemented yet; available agents: "
                          f"{', '.join(AGENT_NAMES)}")
    raise ConfigError(f"unknown agent {name!r}; valid agents: {', '.join(AGENT_NAMES)}")


def agent_class(name: str) -> type[Agent]:
    module, cls = _REGISTRY[check_agent_name(name)].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["AGENT_NAMES", "Agent", "IterationResult", "RunConfig", "agent_class",
           "check_agent_name"]
