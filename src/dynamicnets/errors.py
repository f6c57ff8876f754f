"""Errors that name the file or key at fault and what was expected.

The CLI prints these as one line (no traceback unless ``--debug``) and exits non-zero.
"""


class DynamicNetsError(Exception):
    """Base class for every user-facing error of the library."""


class DataError(DynamicNetsError, ValueError):
    """A data spec, directory or file is missing, empty, corrupt or of the wrong format."""


class SplitError(DataError):
    """A validation split (`val_size`) that cannot be carved from this many samples."""


class ConfigError(DynamicNetsError, ValueError):
    """A configuration key is unknown or has the wrong type/value."""


class CheckpointError(DynamicNetsError, ValueError):
    """A checkpoint is missing, corrupt, or belongs to another model."""


class TrainingError(DynamicNetsError, RuntimeError):
    """Training cannot go on (e.g. the loss became NaN)."""


class OutputError(DynamicNetsError, OSError):
    """A file or folder cannot be written (read-only place, a file where a folder should be,
    full disk); the message names the path and what happened."""


class ExportCheckError(DynamicNetsError, RuntimeError):
    """An exported folder disagrees with eager inference on the check inputs (other
    decisions, or logits further apart than float rounding explains)."""
