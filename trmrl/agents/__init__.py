"""Agents by name, registered through the Python entry-point group ``trmrl.agents``.

Every agent implements :class:`trmrl.agents.base.Agent`. A package adds one in its
pyproject.toml, and ``pip install`` makes it appear in ``trmrl agents``, ``trmrl train`` and
the workflow, with no edit here::

    [project.entry-points."trmrl.agents"]
    myagent = "my_agent:MyAgent"

The built-in agents register the same way (this package's pyproject.toml). Entry points are
read from the installed metadata: after editing them, reinstall (``pip install -e .``).
"""

from __future__ import annotations

import functools
import importlib.metadata
import re

from trmrl.agents.base import Agent, IterationResult
from trmrl.errors import ConfigError

ENTRY_POINT_GROUP = "trmrl.agents"
# names become run directories and the workflow's `<agent>--<variant>` paths
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")
# the built-in agents (this package's entry points) come first, in the order of tables and
# legends; other packages' agents follow by name (installed metadata lists names sorted)
BUILT_IN_ORDER = ("trmrl", "rl2", "varibad", "maml", "pearl", "oracle", "memoryless")
# agents of the design that are not implemented yet: named in errors, never silently missing
PLANNED: tuple[str, ...] = ()


@functools.cache
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = f"entry point {entry.name} = {entry.value!r} of {_distribution(entry)}"
        if not NAME_PATTERN.fullmatch(entry.name):
            raise ConfigError(f"agent name {entry.name!r} ({source}) is not valid: lowercase "
                              "letters, digits and _, starting with a letter")
        if entry.name in found and found[entry.name].value != entry.value:
            raise ConfigError(f"two agents are named {entry.name!r}: {source} and "
                              f"{found[entry.name].value!r} of {_distribution(found[entry.name])}")
        found[entry.name] = entry
    if not found:
        raise ConfigError(f"no agents in the entry-point group {ENTRY_POINT_GROUP!r}: the "
                          "installed metadata of trmrl-bench predates it; reinstall the package "
                          "(pip install -e .)")
    def rank(name: str) -> tuple[int, str]:
        return (BUILT_IN_ORDER.index(name) if name in BUILT_IN_ORDER else len(BUILT_IN_ORDER), name)

    return {name: found[name] for name in sorted(found, key=rank)}


def _distribution(entry: importlib.metadata.EntryPoint) -> str:
    return entry.dist.name if entry.dist is not None else "an unknown distribution"


def agent_names() -> tuple[str, ...]:
    """The installed agents' names: the built-in ones first, in legend order."""
    return tuple(_entry_points())


def check_agent_name(name: str) -> str:
    names = agent_names()
    if name in names:
        return name
    if name in PLANNED:
        raise ConfigError(f"agent {name!r} is not implemented yet; available agents: "
                          f"{', '.join(names)}")
    raise ConfigError(f"unknown agent {name!r}; valid agents: {', '.join(names)}")


@functools.cache
def agent_class(name: str) -> type[Agent]:
    entry = _entry_points()[check_agent_name(name)]
    cls = entry.load()
    source = f"entry point {entry.name} = {entry.value!r} of {_distribution(entry)}"
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise ConfigError(f"{source} is not a subclass of trmrl.agents.base.Agent")
    if getattr(cls, "name", None) != name:
        raise ConfigError(f"{source} names a class whose name is {getattr(cls, 'name', None)!r}; "
                          f"set name = {name!r} in the class")
    return cls


def __getattr__(attribute: str):
    # AGENT_NAMES is read lazily: importing this package must not load every distribution's
    # metadata (nor fail on a broken third-party entry point)
    if attribute == "AGENT_NAMES":
        return agent_names()
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


__all__ = ["AGENT_NAMES", "ENTRY_POINT_GROUP", "Agent", "IterationResult",
           "agent_class", "agent_names", "check_agent_name"]
