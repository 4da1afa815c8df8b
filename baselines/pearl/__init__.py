"""PEARL: a probabilistic context encoder and SAC on (state, z): the agent and its config
(:mod:`baselines.pearl.agent`), networks (:mod:`~baselines.pearl.networks`) and buffers
(:mod:`~baselines.pearl.buffers`)."""

from baselines.pearl.agent import PEARLAgent, PEARLConfig, PEARLSettings

__all__ = ["PEARLAgent", "PEARLConfig", "PEARLSettings"]
