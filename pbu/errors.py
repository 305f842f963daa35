"""Errors the `pbu` command reports as one line (exit 2); torch-free so it can catch them
cheaply."""


class CheckpointError(RuntimeError):
    """A checkpoint or tensor file is missing, corrupt, truncated or unsafe."""


class DataUnavailableError(RuntimeError):
    """The dataset files are not there and cannot be downloaded."""


class UsageError(ValueError):
    """Bad arguments or inputs of a job (``pbu.jobs``): the `pbu` command reports it as one line,
    exit status 2."""
