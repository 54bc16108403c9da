"""The one exception type the library raises for bad input, so callers can catch it and users see the fix."""


class DistillSpecError(ValueError):
    """Bad input or setup: the message names the problem and how to fix it."""


class TrainingInterrupted(DistillSpecError):
    """Training stopped on SIGTERM / SIGINT after saving a checkpoint; the same command resumes from it."""


def require(condition: bool, message: str) -> None:
    """Raise DistillSpecError(message) unless condition holds."""
    if not condition:
        raise DistillSpecError(message)
