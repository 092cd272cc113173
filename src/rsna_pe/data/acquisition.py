"""The acquisition fields of a series that drive scanner shift: manufacturer, model, kVp, slice
thickness and reconstruction kernel. Only these five tags are read, so no patient tag ever
leaves the header. Stage 7 and predict_study.py take them from the header of the series' first
file, which they read anyway (rsna_pe.data.dicom.slice_info); ``read_series_acquisition`` reads
that one header alone."""
from pathlib import Path

from ..core.errors import PipelineError

# Field -> DICOM keyword
TAGS = {"manufacturer": "Manufacturer", "model": "ManufacturerModelName", "kvp": "KVP",
        "slice_thickness": "SliceThickness", "kernel": "ConvolutionKernel"}
FIELDS = tuple(TAGS)


def _text(value):
    """A header value as text: multi-valued ones (a kernel may be two) joined by '/'."""
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "/".join(str(v) for v in value) or None
    return str(value).strip() or None


def fields_of(ds):
    """{field: text or None} of a header already read; a value pydicom cannot convert is None:
    a scanner tag never fails a study."""
    out = {}
    for field, keyword in TAGS.items():
        try:
            out[field] = _text(ds.get(keyword))
        except Exception:  # noqa: BLE001 - pydicom converts lazily and raises many types
            out[field] = None
    return out


def series_acquisition(infos):
    """The fields of a series from its slices (rsna_pe.data.dicom.SliceInfo, any order): those
    read from its first file; all None when no slice carries them."""
    return next((i.acquisition for i in infos if i.acquisition is not None), dict.fromkeys(FIELDS))


def read_series_acquisition(series_dir):
    """{field: text or None} from the header of the series' first file (sorted by name)."""
    import pydicom
    first = next(iter(sorted(Path(series_dir).glob("*.dcm"))), None)
    if first is None:
        raise PipelineError(f"{series_dir}: no .dcm file")
    try:
        ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=list(TAGS.values()))
    except Exception as e:  # pydicom raises many kinds for a damaged file
        raise PipelineError(f"{first}: unreadable DICOM header ({type(e).__name__}: {e})") from None
    return fields_of(ds)


def fields_table(rows):
    """[(study, fields or None)] -> a frame: StudyInstanceUID, then FIELDS, blank where unknown
    (a study that could not be read): site validation's subgroup csv."""
    import pandas as pd  # heavy: only the tables need it

    return pd.DataFrame([{"StudyInstanceUID": study, **(fields or {})} for study, fields in rows],
                        columns=["StudyInstanceUID", *FIELDS])
