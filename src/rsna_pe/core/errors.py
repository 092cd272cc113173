"""The error types a stage reports as a one-line message and a non-zero exit (rsna_pe.core.cli).

``PipelineError`` is what a stage catches and reports; its subclasses say what is at fault: a
DICOM file, another input file (JPEG, npz, csv, embeddings) or a config.
"""


class PipelineError(Exception):
    """Bad input or state the user must fix; the message names the file or key."""


class BadFileError(PipelineError):
    """One file at fault; the message names the file and the reason, also kept apart as
    ``path`` and ``reason`` (a per-series runner lists them, rsna_pe.core.parallel)."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}" if str(path) else reason)
        self.path, self.reason = str(path), reason


class DicomReadError(BadFileError):
    """A DICOM file or series that cannot be read; the message names the file and the reason."""


class InputFileError(BadFileError):
    """A JPEG, npz, csv or embedding file that cannot be read or written; the message names the
    file and the reason."""


class ConfigError(PipelineError):
    """A config file, key or override that cannot be used; the message names the file or key."""
