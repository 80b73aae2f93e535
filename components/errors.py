"""Errors a person can act on: each says what failed and what to do about it."""


class LmRecsysError(Exception):
    """Base class of every error the platform raises on purpose."""


class SourceError(LmRecsysError):
    """The input data could not be read: missing, empty, malformed or corrupted."""


class ChecksumError(SourceError):
    """A downloaded or cached file does not have the expected SHA-256."""


class ValidationFailed(LmRecsysError):
    """A snapshot failed its Great Expectations suites and was quarantined."""

    def __init__(self, message: str, report_path: str | None = None):
        super().__init__(message)
        self.report_path = report_path


class SnapshotRejected(LmRecsysError):
    """A downstream stage was handed a snapshot that is not accepted."""


class EncoderError(LmRecsysError):
    """The configured text encoder cannot be loaded."""


class RegistryError(LmRecsysError):
    """The model registry could not be reached or is in an unexpected state."""


class WarmStartIncompatible(LmRecsysError):
    """An earlier model cannot seed this fit (another kind, architecture or encoder)."""


class TrainingDiverged(LmRecsysError):
    """A candidate's training produced a non-finite loss; the candidate is dropped from the run."""


class ChampionUnreadable(LmRecsysError):
    """The registry names a champion whose artifact cannot be loaded (missing or corrupt files)."""

    def __init__(self, message: str, version: str):
        super().__init__(message)
        self.version = version


class InvalidHandle(LmRecsysError):
    """An id or path handed between stages (snapshot id, run key, folder) is malformed or points
    outside the data root."""
