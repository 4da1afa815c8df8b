"""RL2-PPO: a GRU over the trial, trained with the package's PPO (see :mod:`baselines.rl2.rl2`)."""

from baselines.rl2.rl2 import RL2Agent, RL2Config, RL2Model

__all__ = ["RL2Agent", "RL2Config", "RL2Model"]
