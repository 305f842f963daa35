"""Errors the `pbu` command reports as one line (exit 2); torch-free so it can catch them cheaply."""


class CheckpointError(RuntimeError):
    """A checkpoint or tensor file is missing, corrupt, truncated or unsafe."""


class DataUnavailableError(RuntimeError):
    """The dataset files are not there and cannot be downloaded."""
