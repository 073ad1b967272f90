"""The exception types whose messages reach the caller or the operator: a caller's mistake, a bad setting, missing weights, no room."""


class InputError(ValueError):
    """A caller's mistake. The message names the input, the value and what is allowed."""


class SettingsError(RuntimeError):
    """An operator's setting (an environment variable) has a value that is not allowed. The message
    names the variable, the value and what is allowed; the service or command does not start."""


class WeightsError(RuntimeError):
    """A checkpoint the service needs is missing or unusable. The message says how to get it."""


class CapacityError(RuntimeError):
    """The model asked for cannot fit the deployment's memory budget, even after evicting every
    model that may go. The message names the model, its size and the budget."""


class ServerStalled(RuntimeError):
    """The batched decoding made no progress for MUSICGEN_STALL_SECONDS while this prediction
    waited (musicgen.tokens.batching.Watch): it fails instead of waiting for ever. The message says
    what held the path; the operator sees the same in the log."""


class ServerShuttingDown(RuntimeError):
    """The server is draining (it was asked to stop): a new prediction is refused at once, and one
    that cannot finish within MUSICGEN_DRAIN_SECONDS is stopped. The message says so and to send
    the request again (another replica takes it)."""


class PredictionCancelled(BaseException):
    """Raised in a running prediction's thread when its caller cancels it. A BaseException, like
    asyncio's CancelledError and Cog's CancelationException, so `except Exception` never stops it."""


class TrainingError(RuntimeError):
    """A fine-tune could not go on (its loss diverged). The message says which input to change."""
