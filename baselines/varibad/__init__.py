"""VariBAD: a VAE belief over the task and PPO on (state, belief) (see :mod:`baselines.varibad.varibad`)."""

from baselines.varibad.varibad import VariBADAgent, VariBADConfig, VariBADModel, elbo_loss

__all__ = ["VariBADAgent", "VariBADConfig", "VariBADModel", "elbo_loss"]
