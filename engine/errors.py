"""The engine's one error type for bad input: the pipeline's StageError is one too, so a retry policy
tells them apart from transient failures. Imports no torch (engine/config.py and runtime.py use it)."""


class InputError(RuntimeError):
    """A failure caused by the input (a model, a plan, a parameter): a retry meets the same, and the
    message is the whole story."""


def first_line(err: BaseException) -> str:
    """The first line of an error's message, or its type's name where the message is empty: an error that
    quotes another stays one line, and never fails itself on an empty message (str(OSError()) is "")."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def typed_first_line(err: BaseException) -> str:
    """`first_line` after the error's type's name, for errors whose type says what went wrong."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
