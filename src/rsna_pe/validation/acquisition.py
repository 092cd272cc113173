"""Acquisition fields of a series (what drives scanner shift) from its DICOM header, and the
optional subgroup csv. Only these five fields are read: no patient tag ever leaves the header."""
from pathlib import Path

import pandas as pd

from ..core.errors import PipelineError
from ..core.io import read_csv

# Field -> DICOM keyword. Stage 7 and predict_study.py are to record these per study (a later step).
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
    return {field: _text(ds.get(keyword)) for field, keyword in TAGS.items()}


def acquisition_table(split_dir):
    """One row per ``<study>/<series>/`` folder of a split folder (Kaggle layout): the study
    folder's name as StudyInstanceUID, then FIELDS."""
    split_dir = Path(split_dir)
    series = sorted(d for d in split_dir.glob("*/*") if d.is_dir() and next(d.glob("*.dcm"), None))
    if not series:
        raise PipelineError(f"{split_dir}: no <study>/<series>/ folders with .dcm files")
    rows = [{"StudyInstanceUID": d.parent.name, **read_series_acquisition(d)} for d in series]
    df = pd.DataFrame(rows, columns=["StudyInstanceUID", *FIELDS])
    dup = df["StudyInstanceUID"].duplicated()
    if dup.any():
        raise PipelineError(f"{split_dir / df['StudyInstanceUID'][dup].iloc[0]}: several series; "
                            "one series per study is expected")
    return df


def read_subgroup_csv(path, study_aliases):
    """The subgroup csv: a study id column and any others, each a grouping (e.g. the FIELDS
    that ``acquisition_table`` writes, or a site or ward column); -> frame indexed by study."""
    df = read_csv(path, dtype=str)
    lookup = {a.lower() for a in study_aliases}
    study_cols = [c for c in df.columns if c.strip().lower() in lookup]
    if len(study_cols) != 1:
        raise PipelineError(f"{path}: needs one study id column ({', '.join(study_aliases)})")
    df = df.rename(columns={study_cols[0]: "StudyInstanceUID"})
    if df["StudyInstanceUID"].duplicated().any():
        raise PipelineError(f"{path}: study {df['StudyInstanceUID'][df['StudyInstanceUID'].duplicated()].iloc[0]} "
                            "has several rows")
    if len(df.columns) < 2:
        raise PipelineError(f"{path}: no column to group by besides the study id")
    return df.set_index("StudyInstanceUID")
