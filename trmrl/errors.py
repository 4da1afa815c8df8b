"""Errors the command line reports as one line (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value and the valid ones (exit 2)."""


class ConfigError(UserError):
    """A hyperparameter or workflow setting that does not exist or has the wrong type."""


class RunError(UserError):
    """A run directory that cannot be used as asked; nothing is overwritten."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and keeps its last good checkpoint (exit 1)."""
