"""The one error type for bad user input: caught by ``src/train.py`` and shown without traceback."""


class ConfigError(ValueError):
    """A config value, path or file the user gave is not usable; the message names the field,
    the value and what is allowed."""
