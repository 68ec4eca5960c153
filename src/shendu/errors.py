"""The one exception type users see."""


class ShenduError(Exception):
    """A user-facing error: the CLI prints its message and exits 2."""
