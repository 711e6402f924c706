"""The one exception type the CLI turns into a one-line message (bad input, missing files)."""


class MetaticketError(Exception):
    """A user-facing error: the message names the key or file and the fix."""
