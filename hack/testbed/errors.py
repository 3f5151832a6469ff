"""The one exception the test bed raises when it cannot do its job."""

__all__ = ["BedError"]


class BedError(RuntimeError):
    """The bed could not start or stop; the message says what is missing and where to look."""
