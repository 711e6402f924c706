"""The one exception type the CLI turns into a one-line message (bad input, missing files)."""

import errno

# what writing into a read-only place (an archive, a shared results disk, a read-only cache) fails with
READ_ONLY_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM)


class MetaticketError(Exception):
    """A user-facing error: the message names the key or file and the fix."""
