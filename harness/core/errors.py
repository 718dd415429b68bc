"""Errors that mean "the input is wrong", which every command line turns into exit code 2 and one line."""


class UsageError(ValueError):
    """Bad input from the user (config, names, files); never a bug in the harness."""


class ConfigError(UsageError):
    """A config key is unknown, mistyped or out of range; the message names its path."""


class UnknownNameError(UsageError):
    """A benchmark, model or method name that is not registered."""


class PretrainedWeightsError(UsageError):
    """Weights that were asked for cannot be had (offline and not cached, or not a state_dict)."""
