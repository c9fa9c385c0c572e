"""The trainer's error, below the trainer and its hooks so both can raise it."""


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, bad resume state, ...); the message says why."""
