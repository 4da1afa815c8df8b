"""Hyperparameter resolution: dataclass defaults < versioned package YAML < user overrides.

Each agent keeps its hyperparameters in one dataclass (a comment per field). A package YAML
(the file ``Agent.defaults`` names; ``trmrl/configs/<agent>.yaml`` for the built-in agents)
holds the per-env defaults, e.g. the paper's launch commands; ``--set key=value`` and the
workflow config override them. Unknown keys and values of the wrong type are errors that
name the key and what is allowed.

All of these are one flat mapping of keys, as is a run's config.yaml; :func:`build_run` splits
it into the trainer's settings and the agent's hyperparameters (:mod:`trmrl.settings`), and
:func:`flatten` joins them again.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from importlib import resources
from typing import Any

import yaml

from trmrl.errors import ConfigError

MAX_SEED = 2**32 - 1  # numpy and torch seed from it (torch.manual_seed takes < 2**64)
MAX_LAYER_WIDTH = 65_536  # units of one layer in a size tuple (hidden=[64, 64]): memory-sane


def load_defaults(agent: str) -> dict[str, Any]:
    """The package YAML of an agent: ``{"version": int, "default": {...}, "envs": {...}}``,
    from the resource its class names (``Agent.defaults``, "package:file.yaml")."""
    from trmrl.agents import agent_class  # the registry imports the agents, which import this

    cls = agent_class(agent)
    spec = getattr(cls, "defaults", "")
    package, _, file = spec.partition(":")
    if not (package and file):
        raise ConfigError(f"agent {agent!r} ({cls.__module__}.{cls.__qualname__}) names no "
                          f"defaults file: set defaults = \"package:file.yaml\" (got {spec!r})")
    try:
        text = resources.files(package).joinpath(file).read_text()
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as error:
        raise ConfigError(f"agent {agent!r}: its defaults file {spec!r} cannot be read "
                          f"({error})") from None
    data = yaml.safe_load(text)
    if not (isinstance(data, dict) and isinstance(data.get("version"), int)):
        raise ConfigError(f"agent {agent!r}: its defaults file {spec!r} must be a mapping with "
                          "an integer `version` (and `default`, `envs`, `presets` mappings)")
    return data


def env_defaults(agent: str, env: str, preset: str = "") -> tuple[dict[str, Any], int]:
    """(the YAML values for ``env``, with the named preset's over them, the YAML's version)."""
    data = load_defaults(agent)
    values = dict(data.get("default") or {})
    values.update((data.get("envs") or {}).get(env) or {})
    if preset:
        presets = data.get("presets") or {}
        if preset not in presets:
            valid = ", ".join(sorted(presets)) or "none"
            raise ConfigError(f"unknown preset {preset!r} for agent {agent}; valid presets: {valid}")
        values.update(presets[preset])
        values["preset"] = preset
    return values, int(data["version"])


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["lr_policy=1e-4", "tfixup=false"]`` -> dict, values parsed as YAML scalars."""
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as error:  # "[64" or a tag such as !!python/object
            reason = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(f"--set {pair!r}: not a YAML value ({reason})") from None
    return out


def build(config_cls: type, values: dict[str, Any], source: str = "config"):
    """An instance of the dataclass ``config_cls`` from ``values``, type-checked."""
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"unknown {source} key {key!r}; valid keys: {', '.join(sorted(fields))}")
        kwargs[key] = coerce(key, value, hints[key], source)
    config = config_cls(**kwargs)
    if hasattr(config, "validate"):
        config.validate()
    return config


def run_keys(agent_cls) -> dict[str, type]:
    """Every flat key of an agent, with the dataclass that holds it: its trainer settings'
    (``agent_cls.settings_class``) and its hyperparameters' (``agent_cls.config_class``)."""
    settings_keys = {f.name: agent_cls.settings_class for f in dataclasses.fields(agent_cls.settings_class)}
    config_keys = {f.name: agent_cls.config_class for f in dataclasses.fields(agent_cls.config_class)}
    both = sorted(set(settings_keys) & set(config_keys))
    if both:  # a definition error of the agent: a flat key must name one object
        raise ConfigError(f"agent {getattr(agent_cls, 'name', agent_cls.__name__)!r}: "
                          f"{', '.join(both)} are both trainer settings "
                          f"({agent_cls.settings_class.__name__}) and hyperparameters "
                          f"({agent_cls.config_class.__name__}); remove them from one")
    return {**settings_keys, **config_keys}


def build_run(agent_cls, values: dict[str, Any], source: str = "config") -> tuple[Any, Any]:
    """(trainer settings, hyperparameters) of an agent from one flat mapping: each key goes to
    the dataclass that has it; an unknown key is an error naming the valid keys of both."""
    keys = run_keys(agent_cls)
    for key in values:
        if key not in keys:
            raise ConfigError(f"unknown {source} key {key!r}; valid keys: {', '.join(sorted(keys))}")
    settings = build(agent_cls.settings_class,
                     {k: v for k, v in values.items() if keys[k] is agent_cls.settings_class}, source)
    config = build(agent_cls.config_class,
                   {k: v for k, v in values.items() if keys[k] is agent_cls.config_class}, source)
    return settings, config


def flatten(settings, config) -> dict[str, Any]:
    """The flat mapping of (trainer settings, hyperparameters), as config.yaml holds it."""
    return {**to_dict(settings), **to_dict(config)}


def coerce(key: str, value: Any, hint: Any, source: str = "config") -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, tuple[int, ...], X | None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(key, value, inner[0], source)
    if hint in (int, float) and isinstance(value, str):
        value = _number(value)  # YAML 1.1 reads 3e-5 and 2e7 (no dot) as strings
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():  # 2e7 in YAML
            return int(value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an int beyond float range
                number = math.inf
            if not math.isfinite(number):  # inf and NaN mean nothing as a hyperparameter
                raise ConfigError(f"{source} key {key!r} must be a finite number, got {value!r}")
            return number
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            items = tuple(coerce(key, v, args[0], source) for v in value)
            if args[0] is int and any(not 0 < v <= MAX_LAYER_WIDTH for v in items):
                raise ConfigError(f"{source} key {key!r} holds layer sizes: each must be in "
                                  f"1..{MAX_LAYER_WIDTH}, got {list(value)!r}")
            return items
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{source} key {key!r} must be {name}, got {value!r}")


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text  # not a number: the caller reports the type error


def to_dict(config) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
