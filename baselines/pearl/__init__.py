"""PEARL: a probabilistic context encoder and SAC on (state, z) (:mod:`baselines.pearl.pearl`)."""

from baselines.pearl.pearl import PEARLAgent, PEARLConfig

__all__ = ["PEARLAgent", "PEARLConfig"]
