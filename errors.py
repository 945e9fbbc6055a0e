"""The project's error types: every mistake a user can make raises one of these.

`main` turns a `ConfigError` (or a subclass) into one line, `error: ...`, and exit status 2.
Anything else is a bug in this project and keeps its traceback (exit status 1).
"""


class ConfigError(ValueError):
    """A bad config, option or argument: the message names the key, what was expected and what came."""


class DataError(ConfigError):
    """Data that is missing, truncated, corrupt or that no mirror could provide."""


class ModelFileError(ConfigError):
    """A model file that is missing, unreadable, not a model, unsafe, or of another format version."""
