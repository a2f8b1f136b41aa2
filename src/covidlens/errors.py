"""The one exception type that the CLI turns into a one-line message and exit code 2."""


class CovidlensError(Exception):
    """A user error: a bad path, value, file or config. The message says what and what to do."""
