"""The engine's one error type for bad input: the pipeline's StageError is one too, so a retry policy
tells them apart from transient failures. Imports no torch (engine/config.py and runtime.py use it)."""


class InputError(RuntimeError):
    """A failure caused by the input (a model, a plan, a parameter): a retry meets the same, and the
    message is the whole story."""
