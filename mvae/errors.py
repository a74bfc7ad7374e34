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


class TrainingInterrupted(MVAEError):
    """Training stopped on SIGTERM/SIGINT after writing a checkpoint; resume with ``resume=True``.

    Attributes
    ----------
    signal_number : int
    exit_code : int
        128 + signal number (143 for SIGTERM, 130 for SIGINT), as shells report it.
    checkpoint : str or None
        Where the checkpoint was written.
    """

    def __init__(self, message: str, signal_number: int, checkpoint=None):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        self.checkpoint = checkpoint
