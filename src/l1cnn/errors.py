"""The library's error types: each carries a message a user can act on.

Only ``cli.py`` turns them into ``error: ...`` lines and exit codes.
"""


class L1CNNError(Exception):
    """Base of every error l1cnn raises on purpose (bad input, not a bug)."""


class ConfigError(L1CNNError):
    """A config file, key, type or value is wrong."""


class DataError(L1CNNError):
    """Input data is missing, malformed or unusable."""


class RunError(L1CNNError):
    """A run folder is missing, not a run, locked, or cannot be written."""


class ModelError(L1CNNError):
    """A model file cannot be loaded safely or does not match its run."""


class TrainingError(L1CNNError):
    """Training itself went wrong (for example the loss became NaN)."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none.

    Third-party errors (converters, loaders) often carry pages of detail; a user-facing
    ``error:`` line takes only their first line.
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
