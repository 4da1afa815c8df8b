"""trmrl-bench: a reproducible benchmark suite for meta-reinforcement learning."""

__version__ = "0.1.0"
