"""The one exception type for a caller's mistakes, and the one for missing weights."""


class InputError(ValueError):
    """A caller's mistake. The message names the input, the value and what is allowed."""


class WeightsError(RuntimeError):
    """A checkpoint the service needs is missing or unusable. The message says how to get it."""
