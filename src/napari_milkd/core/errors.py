"""User-facing errors of the engine.

A :class:`MilkdError` carries a one-line message that tells the user what is wrong and, where it can,
what to do. Front-ends show it as is: the CLI prints ``milkd: error: <message>`` and exits with 2, the
widget shows a napari notification. Anything else escaping the engine is a bug.
"""


class MilkdError(Exception):
    """An error caused by the user's input or environment, with a one-line message."""


class SlideError(MilkdError):
    """A slide that is missing, unsupported, truncated or otherwise unreadable."""


class InputError(MilkdError):
    """Bad input that is not a slide: a CSV, a folder, a mask, an annotation file, an option value."""


class CheckpointError(MilkdError):
    """A checkpoint that is missing, corrupt, or from a different model."""
