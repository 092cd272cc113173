"""The acquisition fields of a split folder's studies (rsna_pe.data.acquisition: what drives
scanner shift, no patient tag) as a subgroup csv, and reading the optional subgroup csv."""
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import read_csv
from ..data.acquisition import fields_table, read_series_acquisition


def acquisition_table(split_dir):
    """One row per ``<study>/<series>/`` folder of a split folder (Kaggle layout): the study
    folder's name as StudyInstanceUID, then rsna_pe.data.acquisition.FIELDS."""
    split_dir = Path(split_dir)
    series = sorted(d for d in split_dir.glob("*/*") if d.is_dir() and next(d.glob("*.dcm"), None))
    if not series:
        raise PipelineError(f"{split_dir}: no <study>/<series>/ folders with .dcm files")
    df = fields_table((d.parent.name, read_series_acquisition(d)) for d in series)
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
