"""One error type for problems the user can fix (bad input, bad config, missing model)."""


class DataforgeError(Exception):
    """A clear, user-facing error: the CLI prints its message (no traceback) and exits with status 2."""
