"""Exceptions that mvae raises for problems a user can fix.

Every message names the file, sample or feature and the offending value, and says what to do.
"""


class MVAEError(Exception):
    """Base class of the errors mvae raises on purpose."""


class InputError(MVAEError, ValueError):
    """A count table, metadata file, tree or argument is unusable as given."""


class ModelFileError(MVAEError, OSError):
    """A saved model directory or checkpoint cannot be read safely."""


class TrainingError(MVAEError, RuntimeError):
    """Training cannot continue (a non-finite loss or gradient); the message names epoch and step."""
