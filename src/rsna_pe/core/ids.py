"""The one rule for a study, series or SOP id used as a file or folder name.

Ids come from files the pipeline does not control (train.csv, test.csv, DICOM headers, folder
names), so an id becomes part of a path only if it is a plain name. Accepted: 1 to 64 ASCII
letters, digits, '.' and '-', starting with a letter or a digit. That holds

- every DICOM UID (digits and dots, at most 64 characters: DICOM PS3.5 section 9.1),
- the competition's ids (12 lowercase hex characters),
- what anonymising archives write (letters, digits and hyphens: 'ANON-0001', UUIDs).

Everything else is refused, each for a reason: '/' and '\\' (folders), a leading '.' ('..',
hidden files and this project's temporaries '.<name>.*.tmp'), a leading '-' (read as an option
by command-line tools), '_' (a submission's exam id is '<study>_<label>', split at the first
'_'), ':' (drive letters, NTFS streams), whitespace, control characters, quotes, markup and
shell characters, non-ASCII letters (file systems normalise them differently), and more than
64 characters (a UID's maximum; with the temporaries' additions every derived name stays far
under the usual 255-byte limit). Ids that differ only in letter case are not told apart on
case-insensitive file systems; DICOM UIDs and the competition's ids have no letters or only
lowercase ones.
"""
import re
import reprlib

from .errors import DicomReadError

MAX_LENGTH = 64
_SAFE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9.-]{{0,{MAX_LENGTH - 1}}}")
RULE = f"1-{MAX_LENGTH} of A-Z a-z 0-9 . -, starting with a letter or digit"
_SHOW = reprlib.Repr()
_SHOW.maxstring = 80  # a hostile id may be long: messages stay one readable line


def show(value):
    """An id as it appears in a message: quoted, escaped (one line), cut when long."""
    return _SHOW.repr(value)


class UnsafeIdError(DicomReadError):
    """An id refused as a path component. A per-series runner lists it like an unreadable
    series (rsna_pe.core.parallel): no file (``path`` empty), the message as ``reason``."""

    def __init__(self, message):
        super().__init__("", message)


def is_safe(value):
    """Whether ``value`` is an id that may be used as a file or folder name."""
    return isinstance(value, str) and _SAFE.fullmatch(value) is not None


def series_name(study, series):
    """'<study>/<series>' as a message names a series (each id quoted and escaped)."""
    return f"series {show(study)}/{show(series)}"


def refusal(value, kind):
    """Why ``value``, a ``kind`` (e.g. 'SOPInstanceUID'), is refused: one line."""
    return f"{kind} {show(value)} is not a safe file name ({RULE})"


def checked(value, kind, where):
    """``value`` if it is a safe id, else UnsafeIdError: one line naming ``where`` (the
    series), ``kind`` and the value."""
    if is_safe(value):
        return value
    raise UnsafeIdError(f"{where}: {refusal(value, kind)}")
