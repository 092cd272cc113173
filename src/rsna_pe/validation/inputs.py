"""What a site brings: labels per study and the pipeline's predictions, matched by study.

Labels: a csv with a study id and any subset of the exam labels, one row per study or one row
per image (train.csv layout); the accepted names are in ``ALIASES`` (docs/validation.md).
Predictions: a stage-7 ``submission.csv`` (exam rows ``<study>_<label>``, image rows by
SOPInstanceUID) or a folder of ``predict_study.py`` outputs (``<x>/prediction.json``).
"""
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from .. import metric
from ..core.errors import PipelineError
from ..core.io import read_csv
from ..core.labels import EXAM_LABELS, IMAGE_LABEL, PE_PRESENT, STUDY_LABELS, parse_exam_id
from ..metric.arrays import valid
from ..data.acquisition import FIELDS as ACQUISITION_FIELDS

STUDY, SOP = "StudyInstanceUID", "SOPInstanceUID"
# Accepted column names, matched case-insensitively; the first one is the canonical name.
ALIASES = {
    STUDY: (STUDY, "study_id", "study"),
    PE_PRESENT: (PE_PRESENT, "pe_present_exam", "pe"),
    "negative_exam_for_pe": ("negative_exam_for_pe", "negative_exam"),
    **{k: (k,) for k in EXAM_LABELS if k != "negative_exam_for_pe"},
    SOP: (SOP,),
    IMAGE_LABEL: (IMAGE_LABEL,),
}


class SiteLabels(NamedTuple):
    table: pd.DataFrame  # index: study; columns: the STUDY_LABELS given (0/1, NaN = unknown)
    images: dict         # study -> (SOPs, image labels), when given per image; else None
    sop_study: pd.Series  # SOP -> study, when the file has SOPInstanceUID; else None
    notes: list


class SitePredictions(NamedTuple):
    exam: pd.DataFrame   # index: study; columns: EXAM_LABELS (NaN where absent)
    images: dict         # study -> (SOPs, P(pe_present_on_image))
    acquisition: pd.DataFrame  # index: study; ACQUISITION_FIELDS (prediction.json), or None
    notes: list


class Matched(NamedTuple):
    studies: list
    y: pd.DataFrame      # truth, studies x scored labels
    p: pd.DataFrame      # predictions, same shape
    notes: list


def canonical_columns(df, source, names=ALIASES):
    """``df`` with accepted aliases renamed to their canonical names (case-insensitive)."""
    lookup = {a.lower(): canon for canon, aliases in names.items() for a in aliases}
    rename = {c: lookup[c.strip().lower()] for c in df.columns if c.strip().lower() in lookup}
    seen = pd.Series(list(rename.values()))
    if seen.duplicated().any():
        raise PipelineError(f"{source}: several columns mean {seen[seen.duplicated()].iloc[0]}")
    return df.rename(columns=rename)


def positions(keys):
    """{key: positions of its rows} (file order kept within a key)."""
    return pd.Series(np.arange(len(keys))).groupby(np.asarray(keys)).indices


def _binary(df, cols, source):
    """The columns as floats 0/1 (blank = NaN, unknown); anything else is an error."""
    out = df[cols].apply(pd.to_numeric, errors="coerce")
    bad = (out.notna() & ~out.isin([0, 1])) | (out.isna() & df[cols].notna())
    if bad.to_numpy().any():
        r, c = np.argwhere(bad.to_numpy())[0]
        raise PipelineError(f"{source}: {cols[c]} of study {df[STUDY].iloc[r]} is "
                            f"'{df[cols[c]].iloc[r]}', not 0, 1 or blank")
    return out


def _per_study(values, study, source):
    """One row per study; a label that differs between the rows of a study is an error."""
    g = values.groupby(study.to_numpy(), sort=True)
    varying = g.nunique(dropna=False) > 1
    if varying.to_numpy().any():
        r, c = np.argwhere(varying.to_numpy())[0]
        raise PipelineError(f"{source}: {values.columns[c]} differs between the rows of study "
                            f"{varying.index[r]}")
    return g.first()


def read_labels(path):
    """SiteLabels of a labels csv (see ALIASES; docs/validation.md)."""
    df = canonical_columns(read_csv(path, dtype=str), path)
    if STUDY not in df.columns:
        raise PipelineError(f"{path}: no study id column ({', '.join(ALIASES[STUDY])})")
    df[STUDY] = df[STUDY].fillna("").str.strip()
    if (df[STUDY] == "").any():
        raise PipelineError(f"{path}: a row without a study id")
    cols = [k for k in STUDY_LABELS if k in df.columns]
    table = _per_study(_binary(df, cols, path), df[STUDY], path)
    images = sop_study = None
    if SOP in df.columns:
        sop_study = pd.Series(df[STUDY].to_numpy(), index=df[SOP].astype(str).to_numpy())
        if sop_study.index.duplicated().any():
            raise PipelineError(f"{path}: duplicate {SOP} {sop_study.index[sop_study.index.duplicated()][0]}")
        if IMAGE_LABEL in df.columns:
            y = _binary(df, [IMAGE_LABEL], path)[IMAGE_LABEL].to_numpy()
            images = {s: (sop_study.index[i], y[i]) for s, i in positions(df[STUDY].to_numpy()).items()}
    notes = []
    if PE_PRESENT not in table.columns:
        table, notes = _derive_pe_present(table, images, path)
    if PE_PRESENT not in table.columns and "negative_exam_for_pe" not in table.columns:
        raise PipelineError(f"{path}: needs pe_present or negative_exam_for_pe (or the image labels "
                            "of train.csv layout); see docs/validation.md")
    return SiteLabels(table, images, sop_study, notes)


def _derive_pe_present(table, images, source):
    """pe_present from the image labels (any positive image, the competition's rule) or as
    neither negative nor indeterminate; unchanged when neither is given."""
    table = table.copy()
    if images is not None:
        table[PE_PRESENT] = [np.nanmax(images[s][1]) if np.isfinite(images[s][1]).any() else np.nan
                             for s in table.index]
        return table, ["pe_present: derived from the image labels (positive when any image is)"]
    if {"negative_exam_for_pe", "indeterminate"} <= set(table.columns):
        pe = 1 - table["negative_exam_for_pe"] - table["indeterminate"]
        if (pe < 0).any():
            raise PipelineError(f"{source}: study {pe.index[pe < 0][0]} is both negative_exam_for_pe "
                                "and indeterminate")
        table[PE_PRESENT] = pe
        return table, ["pe_present: derived as neither negative_exam_for_pe nor indeterminate"]
    return table, []


def read_submission_frame(path):
    """A submission csv (id,label) with unique ids and labels in [0, 1]."""
    df = read_csv(path, ["id", "label"], dtype={"id": str})
    if df["id"].duplicated().any():
        raise PipelineError(f"{path}: duplicate id {df['id'][df['id'].duplicated()].iloc[0]}")
    df["label"] = pd.to_numeric(df["label"], errors="coerce")
    bad = ~valid(df["label"].to_numpy(dtype=np.float64))
    if bad.any():
        raise PipelineError(f"{path}: label of id {df['id'][bad].iloc[0]} is not a number in [0, 1]")
    return df[["id", "label"]]


def mean_per_id(frames):
    """The mean label per id over the submission frames that hold it (an ensemble of files)."""
    return pd.concat(frames, ignore_index=True).groupby("id", sort=False, as_index=False)["label"].mean()


def from_submission(df, sop_study, source):
    """SitePredictions of a submission frame; image rows are tied to their studies through
    ``sop_study`` (SOP -> study; None: image rows are not used)."""
    parsed = [parse_exam_id(i) for i in df["id"]]
    is_exam = np.array([p is not None for p in parsed], dtype=bool)
    rows = pd.DataFrame([p for p in parsed if p is not None], columns=["study", "label"])
    rows["value"] = df["label"].to_numpy()[is_exam]
    exam = rows.pivot(index="study", columns="label", values="value").reindex(columns=list(EXAM_LABELS))
    images, notes = {}, []
    img = df[~is_exam]
    if sop_study is None:
        notes.append(f"{source}: its {len(img)} image rows are not tied to studies (pass --images)")
    elif len(img):
        owner = sop_study.reindex(img["id"].to_numpy())
        if owner.isna().any():
            notes.append(f"{source}: {int(owner.isna().sum())} image rows of no labelled study (ignored)")
        keep = owner.notna().to_numpy()
        ids, values = img["id"].to_numpy()[keep], img["label"].to_numpy()[keep]
        images = {s: (ids[i], values[i]) for s, i in positions(owner.to_numpy()[keep]).items()}
    return SitePredictions(exam, images, None, notes)


def read_prediction_folder(folder):
    """SitePredictions of predict_study.py outputs: ``folder/prediction.json`` and/or
    ``folder/<x>/prediction.json``."""
    folder = Path(folder)
    files = ([folder / "prediction.json"] if (folder / "prediction.json").is_file() else []) + \
        sorted(folder.glob("*/prediction.json"))
    if not files:
        raise PipelineError(f"{folder}: no prediction.json in it or in its subfolders")
    exam, images, acq = {}, {}, {}
    for f in files:
        study, e, sops, probs, a = _read_prediction(f)
        if study in exam:
            raise PipelineError(f"{f}: study {study} has a second prediction.json")
        exam[study], images[study], acq[study] = e, (sops, probs), a
    table = pd.DataFrame.from_dict(exam, orient="index").reindex(columns=list(EXAM_LABELS))
    acquisition = pd.DataFrame.from_dict(acq, orient="index").reindex(columns=list(ACQUISITION_FIELDS))
    has_acq = acquisition.notna().any(axis=None)
    return SitePredictions(table.sort_index(), images, acquisition.sort_index() if has_acq else None, [])


def _read_prediction(path):
    """(study, {label: p}, SOPs, slice probabilities, acquisition fields) of one prediction.json."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("study"), str) or not doc["study"]:
        raise PipelineError(f"{path}: no 'study' id")
    exam = doc.get("exam", {})
    slices = doc.get("slices", [])
    if not isinstance(exam, dict) or not isinstance(slices, list):
        raise PipelineError(f"{path}: 'exam' must be an object and 'slices' a list")
    e = {k: _prob(exam[k], f"{path}: exam {k}") for k in EXAM_LABELS if k in exam}
    probs = np.array([_prob(s.get(IMAGE_LABEL) if isinstance(s, dict) else None, f"{path}: slice {i}")
                      for i, s in enumerate(slices)])
    sops = np.array([str(s.get("sop", i)) for i, s in enumerate(slices)], dtype=object)
    acq = doc.get("acquisition") or {}
    if not isinstance(acq, dict):
        raise PipelineError(f"{path}: 'acquisition' must be an object")
    # Only the named scanner fields are read: nothing else from a header reaches the report.
    a = {k: (None if acq.get(k) is None else str(acq[k])) for k in ACQUISITION_FIELDS}
    return doc["study"], e, sops, probs, a


def _prob(v, where):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
        raise PipelineError(f"{where}: {v!r} is not a probability")
    return float(v)


def read_predictions(path, sop_study=None):
    """SitePredictions of a submission csv or a folder of prediction.json files."""
    path = Path(path)
    if path.is_dir():
        return read_prediction_folder(path)
    return from_submission(read_submission_frame(path), sop_study, str(path))


def postprocessed(preds):
    """The predictions with the competition's post-processing applied again (as inference does
    after averaging); studies without all nine exam values or without images are left as is."""
    full = [s for s in preds.exam.index
            if preds.exam.loc[s].notna().all() and len(preds.images.get(s, ((), ()))[1])]
    exam = preds.exam.copy()
    if full:
        exam.loc[full] = metric.postprocess(exam.loc[full].to_numpy(), [preds.images[s][1] for s in full])
    return preds._replace(exam=exam)


def match(labels, preds):
    """Truth and predictions of the studies that have both, per scored label.

    ``pe_present`` is predicted by the largest image probability of the study (the pipeline's
    call: an exam is positive when any image is > 0.5)."""
    predicted = set(preds.exam.index) | set(preds.images)
    studies = sorted(set(labels.table.index) & predicted)
    if not studies:
        raise PipelineError("no study of the labels has a prediction (study ids differ?)")
    p = preds.exam.reindex(studies)
    p[PE_PRESENT] = [float(np.max(preds.images[s][1])) if len(preds.images.get(s, ((), ()))[1]) else np.nan
                     for s in studies]
    notes = list(labels.notes) + list(preds.notes)
    n_lab, n_pred = len(labels.table), len(predicted)
    if n_lab > len(studies):
        notes.append(f"{n_lab - len(studies)} labelled studies have no prediction (left out)")
    if n_pred > len(studies):
        notes.append(f"{n_pred - len(studies)} predicted studies have no label (left out)")
    cols = []
    for k in STUDY_LABELS:
        if k in labels.table.columns:
            if p[k].notna().any():
                cols.append(k)
            else:
                notes.append(f"{k}: labelled but not predicted (left out)")
    return Matched(studies, labels.table.loc[studies, cols], p[cols], notes)
