"""Errors the command line reports as one line (no traceback)."""


class UserError(ValueError):
    """Bad input from the user: the message names the bad value and the valid ones (exit 2)."""


class ConfigError(UserError):
    """A hyperparameter or workflow setting that does not exist or has the wrong type."""


class RunError(UserError):
    """A run directory that cannot be used as asked; nothing is overwritten."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and keeps its last good checkpoint (exit 1)."""


class Terminated(RuntimeError):
    """SIGTERM stopped a run, after a checkpoint where it could write one (exit 143, like a
    process killed by SIGTERM: schedulers treat it as transient and may run it again)."""
