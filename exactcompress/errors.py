"""The one exception type the command line turns into a one-line message."""


class ExactCompressError(Exception):
    """Bad input or an unusable environment: the message is shown to the user as is."""
