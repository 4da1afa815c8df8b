"""MAML-TRPO: meta-learned initialisation, one inner policy-gradient step (see :mod:`baselines.maml.maml`)."""

from baselines.maml.maml import MAMLAgent, MAMLConfig

__all__ = ["MAMLAgent", "MAMLConfig"]
