"""Synthetic CT pulmonary angiograms in the Kaggle RSNA STR PE layout, for tests and the demo.

Each study is one axial series sampled from a 3-D chest phantom in HU: body, lungs with
vessel texture, spine and ribs, heart with right and left ventricles, aorta, and a
contrast-filled pulmonary arterial tree (trunk, right/left main arteries, lobar arteries).
Findings follow the competition's label rules:

- an embolus is a filling defect (30-90 HU) inside a contrast-filled artery over a run of
  consecutive slices; ``pe_present_on_image`` is 1 on exactly those slices;
- its site sets ``central_pe`` (trunk, main arteries), ``rightsided_pe`` / ``leftsided_pe``;
- its shape sets the chronicity: acute = central defect with contrast all round, chronic =
  eccentric wall-adherent crescent; an exam with both kinds is ``acute_and_chronic_pe``;
- the RV/LV chamber size ratio sets ``rv_lv_ratio_gte_1`` / ``rv_lv_ratio_lt_1``;
- indeterminate exams have poor contrast (arteries ~110 HU, ``qa_contrast``) or motion
  ghosting (``qa_motion``) and no emboli.

The anatomy is exaggerated on purpose (arteries and defects are large) so that a CNN sees a
defect at 64 px input. Everything is determined by the seed: the same seed gives byte-identical
CSVs and DICOM files.

Public API: :func:`generate` (a whole data set), :func:`write_series` / :func:`write_slice`
(DICOM with exact, caller-given HU, for reader tests), :func:`encode_frame`.
"""
import hashlib
import json
import logging
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import (CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless,
                         JPEGLosslessSV1, RLELossless, generate_uid)
from pydicom.valuerep import format_number_as_ds

from .errors import PipelineError
from .labels import EXAM_LABELS, ID_COLUMNS, IMAGE_LABEL, QA_COLUMNS, TRAIN_COLUMNS

log = logging.getLogger(__name__)

VERSION = 3  # bump when the phantom or the plan changes, so old sets are not taken as current
COMPRESSED_SYNTAXES = (JPEGLosslessSV1, JPEG2000Lossless, RLELossless)
# Compressed series take these in turn: JPEG 2000 is rarer since it encodes ~5x slower.
_COMPRESSION_CYCLE = (JPEGLosslessSV1, RLELossless, JPEG2000Lossless, JPEGLosslessSV1, RLELossless)
MANIFEST = "synthetic.json"
OUTPUT_NAMES = ("train", "test", "train.csv", "test.csv", "sample_submission.csv",
                "test_labels.csv", MANIFEST)
_UID_ROOT = "rsna-pe-synthetic"

# Rescale variants: (intercept per slice parity (even, odd), stored padding value).
# "standard" is the common GE-like case (padding -2000 stored = -3024 HU); "mixed" changes the
# intercept from slice to slice, which only per-slice rescaling reads right.
RESCALE_VARIANTS = {
    "standard": ((-1024, -1024), -2000),
    "intercept_1000": ((-1000, -1000), -2000),
    "intercept_2048": ((-2048, -2048), 0),
    "mixed": ((-1024, -1000), -2000),
}
HU_MIN, HU_MAX = -1024, 3071  # scanner range; padding lies outside it

# --- phantom geometry (normalised image coordinates: x right = patient left, y down = posterior;
# t = 0 at the lung bases, 1 at the apices) ---
TRUNK_T = (0.44, 0.64)
RPA_T, LPA_T, PA_HALF = 0.64, 0.67, 0.05   # main arteries: horizontal tubes in a band of t
# Pulmonary arteries (and so their clots) are drawn wider than life, so that a clot still
# covers several pixels when a slice is shrunk to the demo's 64 px CNN input.
ARTERY_SCALE = 1.5
# Where an embolus may sit: t-range per site (main arteries: where the tube is >= 70 % wide).
SITE_T = {
    "trunk": (0.46, 0.62),
    "rpa": (RPA_T - 0.7 * PA_HALF, RPA_T + 0.7 * PA_HALF),
    "lpa": (LPA_T - 0.7 * PA_HALF, LPA_T + 0.7 * PA_HALF),
    "r_lower": (0.12, 0.58),
    "l_lower": (0.12, 0.58),
    "r_upper": (0.72, 0.92),
    "l_upper": (0.72, 0.92),
}
CENTRAL_SITES = ("trunk", "rpa", "lpa")
RIGHT_SITES = ("rpa", "r_lower", "r_upper")
LEFT_SITES = ("lpa", "l_lower", "l_upper")
LOBAR_SITES = ("r_lower", "l_lower", "r_upper", "l_upper")
LOBAR_WEIGHTS = (0.35, 0.3, 0.2, 0.15)


# ----------------------------------------------------------------------------------------------
# DICOM writing
# ----------------------------------------------------------------------------------------------

def encode_frame(stored, transfer_syntax):
    """int16 (H, W) -> encoded bytes of one frame (JPEG Lossless SV1, JPEG 2000 lossless, RLE).

    Encoded with GDCM (python-gdcm): pydicom 3 encodes RLE itself but has no JPEG Lossless
    encoder, and its JPEG 2000 encoder needs a package this project does not install.
    """
    try:
        import gdcm
    except ImportError:
        raise PipelineError(f"python-gdcm is needed to write {transfer_syntax.name} "
                            "(pip install python-gdcm)") from None
    stored = np.ascontiguousarray(stored, dtype="<i2")
    rows, cols = stored.shape
    writer = gdcm.ImageWriter()  # GDCM wants images made by a writer; keep it referenced
    image = writer.GetImage()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((cols, rows, 1))
    image.SetPhotometricInterpretation(
        gdcm.PhotometricInterpretation(gdcm.PhotometricInterpretation.MONOCHROME2))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.ImplicitVRLittleEndian))
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, 16, 15, 1))  # 1 sample, 16 bits, signed
    elem = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    elem.SetByteStringValue(stored.tobytes())
    image.SetDataElement(elem)
    conv = gdcm.ImageChangeTransferSyntax()
    conv.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    conv.SetInput(image)
    if not conv.Change():
        raise PipelineError(f"GDCM could not encode a frame as {transfer_syntax.name}")
    seq = conv.GetOutput().GetDataElement().GetSequenceOfFragments()
    if seq is None or seq.GetNumberOfFragments() < 1:
        raise PipelineError(f"GDCM returned no fragments for {transfer_syntax.name}")
    # GDCM hands bytes back as str; surrogateescape restores them unchanged.
    return b"".join(seq.GetFragment(i).GetByteValue().GetBuffer().encode("utf-8", "surrogateescape")
                    for i in range(seq.GetNumberOfFragments()))


def _ds_str(v):
    """A DS value: the shortest exact text when it fits DS's 16 characters, else the closest."""
    s = repr(float(v))
    if s.endswith(".0"):
        s = s[:-2]
    return s if len(s) <= 16 else format_number_as_ds(float(v))


def _series_header(study_uid, series_uid, frame_uid, patient_id, *, study_date="20200101",
                   kvp=100, series_number=1, slice_thickness=None):
    """Tags every slice of a series shares."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CT"
    ds.Manufacturer = "SYNTHETIC"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT PULMONARY ANGIOGRAM"
    ds.SeriesDescription = "CTPA 1.0 AXIAL"
    ds.PatientName = "SYNTHETIC^PHANTOM"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    if slice_thickness is not None:
        ds.SliceThickness = _ds_str(slice_thickness)
    ds.KVP = _ds_str(kvp)
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.AcquisitionNumber = 1
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleType = "HU"
    return ds


def _write_dataset(path, header, stored, *, sop_uid, z, x0, y0, spacing, instance_number,
                   intercept, slope, transfer_syntax, padding_value=None, drop_tags=()):
    ds = Dataset()
    ds.update(header)
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = int(instance_number)
    ds.ImagePositionPatient = [_ds_str(x0), _ds_str(y0), _ds_str(z)]
    ds.SliceLocation = _ds_str(z)
    ds.Rows, ds.Columns = (int(n) for n in stored.shape)
    ds.PixelSpacing = [_ds_str(spacing), _ds_str(spacing)]
    ds.RescaleIntercept = _ds_str(intercept)
    ds.RescaleSlope = _ds_str(slope)
    if padding_value is not None:
        ds.add_new(0x00280120, "SS", int(padding_value))  # PixelPaddingValue (signed pixels)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    stored = np.ascontiguousarray(stored, dtype="<i2")
    if transfer_syntax == ExplicitVRLittleEndian:
        ds.PixelData = stored.tobytes()
        ds["PixelData"].VR = "OW"
    else:
        ds.PixelData = encapsulate([encode_frame(stored, transfer_syntax)])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "00"
    for name in drop_tags:
        if name in ds:
            del ds[name]
    ds.save_as(path, enforce_file_format=True)


def _per_slice(value, n, name):
    arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (n,))
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr


def _to_stored(hu, intercept, slope):
    stored = np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope)
    if stored.min() < -32768 or stored.max() > 32767:
        raise ValueError(f"HU do not fit int16 with intercept {intercept}, slope {slope}")
    return stored.astype(np.int16)


def write_slice(path, hu, z, *, intercept=-1024, slope=1, transfer_syntax=ExplicitVRLittleEndian,
                pixel_spacing=0.7, instance_number=1, study_uid=None, series_uid=None,
                sop_uid=None, padding_value=None, drop_tags=(), seed=0):
    """Write one CT slice; it decodes to ``round((hu - intercept) / slope) * slope + intercept``
    HU (exactly ``hu`` when ``hu - intercept`` is a multiple of ``slope``, e.g. integer HU and
    slope 1). Returns the SOPInstanceUID. See :func:`write_series` for the arguments."""
    hu = np.asarray(hu)
    if hu.ndim != 2:
        raise ValueError(f"write_slice wants one (H, W) slice, got shape {hu.shape}")
    path = Path(path)
    sop = write_series(path.parent, hu[None], [z], intercept=intercept, slope=slope,
                       transfer_syntax=transfer_syntax, pixel_spacing=pixel_spacing,
                       instance_numbers=[instance_number], study_uid=study_uid,
                       series_uid=series_uid, sop_uids=[sop_uid] if sop_uid else None,
                       padding_value=padding_value, drop_tags=drop_tags, seed=seed,
                       file_names=[path.name])
    return sop[0]


def write_series(series_dir, hu, z_positions, *, intercept=-1024, slope=1,
                 transfer_syntax=ExplicitVRLittleEndian, pixel_spacing=0.7,
                 instance_numbers=None, study_uid=None, series_uid=None, sop_uids=None,
                 padding_value=None, drop_tags=(), seed=0, file_names=None):
    """Write a CT series with exact, caller-given HU; return the SOPInstanceUIDs in input order.

    - ``hu``: (S, H, W) HU values (any numeric dtype); slice k lies at ``z_positions[k]``
      (ImagePositionPatient z, need not be sorted). Stored values are
      ``round((hu - intercept) / slope)`` as signed int16 (ValueError if they do not fit).
    - ``intercept``, ``slope``: a number or one per slice (to test per-slice rescale).
    - ``transfer_syntax``: a pydicom UID: ExplicitVRLittleEndian (default), JPEGLosslessSV1
      (1.2.840.10008.1.2.4.70), JPEG2000Lossless (.4.90) or RLELossless (.5); all lossless.
    - ``instance_numbers``: default 1..S in ascending z.
    - UIDs: default ones derive from ``seed`` and the data, so equal calls write equal files
      and different data never share UIDs. Files are named ``<SOPInstanceUID>.dcm`` unless
      ``file_names`` (one per slice) are given.
    - ``pixel_spacing``: mm, square pixels; the image is centred on x = y = 0.
    - ``padding_value``: stored PixelPaddingValue tag, if any (pixels are not changed).
    - ``drop_tags``: keyword names removed from every file, e.g. ``("ImagePositionPatient",)``
      to test a reader's fallback.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"write_series wants (S, H, W) HU, got shape {hu.shape}")
    transfer_syntax = pydicom.uid.UID(str(transfer_syntax))
    if transfer_syntax not in (ExplicitVRLittleEndian, *COMPRESSED_SYNTAXES):
        raise ValueError(f"transfer syntax {transfer_syntax} is not one this writer supports")
    n = hu.shape[0]
    if len(z_positions) != n:
        raise ValueError(f"{len(z_positions)} z positions for {n} slices")
    z = _per_slice(z_positions, n, "z_positions")
    icp = _per_slice(intercept, n, "intercept")
    slp = _per_slice(slope, n, "slope")
    if np.any(slp == 0):
        raise ValueError("slope must not be 0")
    digest = hashlib.sha256(np.ascontiguousarray(hu).tobytes() + z.tobytes()
                            + icp.tobytes() + slp.tobytes()).hexdigest()
    src = [_UID_ROOT, "write_series", str(seed), digest]
    study_uid = study_uid or generate_uid(entropy_srcs=src + ["study"])
    series_uid = series_uid or generate_uid(entropy_srcs=src + ["series"])
    sop_uids = list(sop_uids) if sop_uids else [generate_uid(entropy_srcs=src + ["sop", str(k)])
                                                for k in range(n)]
    if instance_numbers is None:
        instance_numbers = np.empty(n, int)
        instance_numbers[np.argsort(z, kind="stable")] = np.arange(1, n + 1)
    header = _series_header(study_uid, series_uid,
                            generate_uid(entropy_srcs=src + ["frame", study_uid]),
                            f"SYN{digest[:8].upper()}")
    series_dir = Path(series_dir)
    series_dir.mkdir(parents=True, exist_ok=True)
    half = pixel_spacing * hu.shape[2] / 2
    for k in range(n):
        name = file_names[k] if file_names else f"{sop_uids[k]}.dcm"
        _write_dataset(series_dir / name, header, _to_stored(hu[k], icp[k], slp[k]),
                       sop_uid=sop_uids[k], z=z[k], x0=-half, y0=-half, spacing=pixel_spacing,
                       instance_number=instance_numbers[k], intercept=icp[k], slope=slp[k],
                       transfer_syntax=transfer_syntax, padding_value=padding_value,
                       drop_tags=drop_tags)
    return sop_uids


# ----------------------------------------------------------------------------------------------
# The plan: which study gets which findings, variants and slices (cheap, done up front)
# ----------------------------------------------------------------------------------------------

@dataclass
class Embolus:
    site: str
    kind: str            # "acute" | "chronic"
    k0: int              # first and last slice index (z order) it is drawn on
    k1: int
    size: float          # defect radius as a fraction of the artery radius
    angle: float         # where a chronic defect hugs the wall; jitter direction for acute ones
    hu: float
    along: tuple = (0.25, 0.75)  # part of a main artery's length it fills


@dataclass
class StudySpec:
    split: str
    index: int
    seed: int
    study_uid: str
    series_uid: str
    n_slices: int
    t: list              # anatomical position of each slice (z order)
    z0: float
    spacing: float
    matrix: int
    fov: float
    transfer_syntax: str
    rescale: str
    contrast: float
    rv_lv: float
    motion: bool
    flow: bool
    labels: dict         # exam-level csv columns (EXAM_LABELS + QA_COLUMNS)
    emboli: list = field(default_factory=list)

    def image_labels(self):
        pe = np.zeros(self.n_slices, np.int64)
        for e in self.emboli:
            pe[e.k0:e.k1 + 1] = 1
        return pe


def _uid(seed, *parts):
    return generate_uid(entropy_srcs=[_UID_ROOT, str(seed), *map(str, parts)])


def _exact_assign(rng, n, fractions, minimum=None):
    """Shuffled list of n category names with counts as close as possible to the fractions.

    ``minimum`` maps a name to (at_least, only_if_n_at_least) so small sets still hold
    every kind of case; it applies only to a name with a fraction above 0 and only as far as
    the n places allow."""
    counts = {k: int(round(f * n)) for k, f in fractions.items()}
    while sum(counts.values()) > n:  # rounding up twice can overshoot by one
        counts[max(counts, key=counts.get)] -= 1
    for k, (least, if_n) in (minimum or {}).items():
        if n >= if_n and fractions[k] > 0:
            counts[k] += max(0, min(least - counts[k], n - sum(counts.values())))
    rest = n - sum(counts.values())
    out = [k for k, c in counts.items() for _ in range(c)] + ["rest"] * rest
    rng.shuffle(out)
    return out


def _odd_matrices(matrix):
    return tuple(max(8, 2 * int(round(matrix * m / 512 / 2))) for m in (448, 576))


def _place_emboli(rng, t, sites_wanted, kinds):
    """One embolus per (site, kind); a site with no slice in its range gives way to a lobar one."""
    emboli = []
    t = np.asarray(t)
    for site, kind in zip(sites_wanted, kinds):
        candidates = [site] + [s for s in rng.permutation(LOBAR_SITES)]
        for s in candidates:
            lo, hi = SITE_T[s]
            ok = np.flatnonzero((t >= lo) & (t <= hi))
            if len(ok):
                break
        else:
            continue  # fewer than about three slices: nowhere to put it
        longest = max(1, int(round(0.6 * len(ok))))
        length = int(rng.integers(min(2, longest), longest + 1)) if longest > 1 else 1
        start = int(rng.integers(0, len(ok) - length + 1))
        k0, k1 = int(ok[start]), int(ok[start + length - 1])
        if kind == "acute":
            size, hu = float(rng.uniform(0.8, 0.9)), float(rng.uniform(30, 60))
        else:
            size, hu = float(rng.uniform(0.75, 0.85)), float(rng.uniform(50, 90))
        a = float(rng.uniform(0.1, 0.45))
        emboli.append(Embolus(s, kind, k0, k1, size, float(rng.uniform(0, 2 * np.pi)), hu,
                              (a, a + float(rng.uniform(0.35, 0.5)))))
    return emboli


def _exam_labels(emboli, case, rv_gte_1, qa):
    lab = {k: 0 for k in EXAM_LABELS + QA_COLUMNS}
    lab.update(qa)
    if not emboli:
        lab["indeterminate" if case == "indeterminate" else "negative_exam_for_pe"] = 1
        return lab
    sites = {e.site for e in emboli}
    kinds = {e.kind for e in emboli}
    lab["central_pe"] = int(bool(sites & set(CENTRAL_SITES)))
    lab["rightsided_pe"] = int(bool(sites & set(RIGHT_SITES)))
    lab["leftsided_pe"] = int(bool(sites & set(LEFT_SITES)))
    lab["chronic_pe"] = int(kinds == {"chronic"})
    lab["acute_and_chronic_pe"] = int(kinds == {"acute", "chronic"})
    lab["rv_lv_ratio_gte_1" if rv_gte_1 else "rv_lv_ratio_lt_1"] = 1
    return lab


def plan(n_train, n_test, slices=(30, 50), matrix=512, seed=0, compressed_fraction=0.3,
         odd_matrix_fraction=0.15, odd_rescale_fraction=0.2, positive_fraction=1 / 3):
    """Decide every study: UIDs, slice count and positions, variants, findings and labels."""
    lo, hi = (int(s) for s in slices)
    if lo < 1 or hi < lo:
        raise PipelineError(f"--slices {lo} {hi}: need 1 <= MIN <= MAX")
    if n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise PipelineError("need at least one study (--n-train/--n-test)")
    if matrix < 16:
        raise PipelineError(f"--matrix {matrix}: at least 16")
    for name, f in (("compressed_fraction", compressed_fraction),
                    ("odd_matrix_fraction", odd_matrix_fraction),
                    ("odd_rescale_fraction", odd_rescale_fraction),
                    ("positive_fraction", positive_fraction)):
        if not 0 <= f <= 1:
            raise PipelineError(f"{name} {f}: must lie in [0, 1]")
    specs = []
    for split_id, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        if n == 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id,)))
        cases = _assign_cases(rng, n, positive_fraction)
        variants = _assign_variants(rng, n, matrix, compressed_fraction, odd_matrix_fraction,
                                    odd_rescale_fraction)
        for i in range(n):
            r = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id, i, 1)))
            specs.append(_study_spec(r, seed, split, i, cases[i], variants[i], lo, hi))
    return specs


def _assign_cases(rng, n, positive_fraction=1 / 3):
    """Per study: (case, positive subtype, central wanted, RV/LV >= 1), with exact shares so
    that small sets still hold every label: ``positive_fraction`` positive (a third in the
    competition data), a few percent indeterminate."""
    cases = _exact_assign(rng, n, {"positive": positive_fraction,
                                   "indeterminate": min(0.04, 1 - positive_fraction)},
                          {"positive": (1, 2), "indeterminate": (1, 8)})
    n_pos = cases.count("positive")
    sub = iter(_exact_assign(rng, n_pos, {"chronic": 0.12, "acute_and_chronic": 0.08},
                             {"chronic": (1, 4), "acute_and_chronic": (1, 5)}))
    central = iter(_exact_assign(rng, n_pos, {"central": 0.2}, {"central": (1, 3)}))
    rvlv = iter(_exact_assign(rng, n_pos, {"gte": 0.45}, {"gte": (1, 2)}))
    out, n_indet = [], 0
    for c in cases:
        if c == "positive":
            s = next(sub)
            out.append(("positive", "acute" if s == "rest" else s, next(central) == "central",
                        next(rvlv) == "gte"))
        elif c == "indeterminate":  # alternately poor contrast and motion
            why = "contrast" if n_indet % 2 == 0 else "motion"
            out.append(("indeterminate", why, False, False))
            n_indet += 1
        else:
            out.append(("negative", None, False, False))
    return out


def _assign_variants(rng, n, matrix, compressed_fraction, odd_matrix_fraction,
                     odd_rescale_fraction):
    """Per study: (matrix, transfer syntax, rescale variant), exact shares, shuffled."""
    n_odd = int(round(odd_matrix_fraction * n))
    mats = [matrix] * (n - n_odd) + [_odd_matrices(matrix)[i % 2] for i in range(n_odd)]
    n_comp = int(round(compressed_fraction * n))
    tss = ([str(_COMPRESSION_CYCLE[i % len(_COMPRESSION_CYCLE)]) for i in range(n_comp)]
           + [str(ExplicitVRLittleEndian)] * (n - n_comp))
    n_resc = int(round(odd_rescale_fraction * n))
    odd = [v for v in RESCALE_VARIANTS if v != "standard"]
    rescs = [odd[i % len(odd)] for i in range(n_resc)] + ["standard"] * (n - n_resc)
    for x in (mats, tss, rescs):
        rng.shuffle(x)
    return list(zip(mats, tss, rescs))


def _study_spec(r, seed, split, i, case, variant, lo, hi):
    kind, sub, central, rv_gte = case
    matrix, ts, rescale = variant
    s = int(r.integers(lo, hi + 1))
    # Slices cover the chest from the lung bases (t = 0) to the apices (t = 1), give or take.
    t0, t1 = r.uniform(-0.03, 0.03), r.uniform(0.97, 1.03)
    t = (t0 + (np.arange(s) + 0.5) / s * (t1 - t0)).round(5).tolist()
    spacing = round(float(r.uniform(250, 330)) / s, 2)
    z0 = round(float(r.uniform(-400, -150)), 2)
    qa = {k: 0 for k in QA_COLUMNS}
    contrast = float(r.uniform(300, 420))
    motion = flow = False
    if kind == "indeterminate":
        if sub == "contrast":
            qa["qa_contrast"], contrast = 1, float(r.uniform(90, 130))
        else:
            qa["qa_motion"], motion = 1, True
    else:  # diagnostic exams: rare QA remarks, flow artefacts, non-embolic defects
        if r.random() < 0.02:
            qa["qa_contrast"], contrast = 1, float(r.uniform(200, 250))
        if r.random() < 0.02:
            qa["qa_motion"] = 1
        if r.random() < 0.05:
            qa["flow_artifact"], flow = 1, True
        if kind == "negative" and r.random() < 0.03:
            qa["true_filling_defect_not_pe"] = 1
    emboli = []
    if kind == "positive":
        n_e = int(r.choice([1, 2, 3, 4], p=[0.3, 0.35, 0.25, 0.1])) + (sub == "acute_and_chronic")
        sites = [str(x) for x in r.choice(LOBAR_SITES, size=n_e, p=LOBAR_WEIGHTS)]
        if central:
            sites[0] = str(r.choice(CENTRAL_SITES, p=(0.5, 0.25, 0.25)))
        if sub == "acute_and_chronic":
            kinds = ["acute", "chronic"] + [str(r.choice(["acute", "chronic"]))
                                            for _ in range(n_e - 2)]
        else:
            kinds = [sub] * n_e
        emboli = _place_emboli(r, t, sites, kinds)
    rv_lv = float(r.uniform(1.15, 1.45) if rv_gte else r.uniform(0.62, 0.85))
    return StudySpec(
        split=split, index=i, seed=int(r.integers(2 ** 31)),
        study_uid=_uid(seed, split, i, "study"), series_uid=_uid(seed, split, i, "series"),
        n_slices=s, t=t, z0=z0, spacing=spacing, matrix=matrix,
        fov=round(float(r.uniform(320, 380)), 1), transfer_syntax=ts, rescale=rescale,
        contrast=contrast, rv_lv=rv_lv, motion=motion, flow=flow,
        labels=_exam_labels(emboli, kind, rv_gte, qa), emboli=emboli)


# ----------------------------------------------------------------------------------------------
# The phantom
# ----------------------------------------------------------------------------------------------

@dataclass
class Disk:
    cx: float
    cy: float
    rx: float
    ry: float

    def bbox(self):
        return self.cx - self.rx, self.cx + self.rx, self.cy - self.ry, self.cy + self.ry

    def mask(self, x, y):
        return ((x - self.cx) / self.rx) ** 2 + ((y - self.cy) / self.ry) ** 2 <= 1


@dataclass
class Capsule:
    """Points within r of the segment p-q (an axial cut through a tube lying in the slice)."""
    px: float
    py: float
    qx: float
    qy: float
    r: float

    def bbox(self):
        return (min(self.px, self.qx) - self.r, max(self.px, self.qx) + self.r,
                min(self.py, self.qy) - self.r, max(self.py, self.qy) + self.r)

    def mask(self, x, y):
        dx, dy = self.qx - self.px, self.qy - self.py
        u = np.clip(((x - self.px) * dx + (y - self.py) * dy) / (dx * dx + dy * dy + 1e-12), 0, 1)
        return (x - self.px - u * dx) ** 2 + (y - self.py - u * dy) ** 2 <= self.r ** 2


class Canvas:
    """One slice in HU; shapes are painted inside their bounding boxes only (cheap)."""

    def __init__(self, n, fill):
        self.n = n
        self.c = ((np.arange(n) + 0.5) * 2 / n - 1).astype(np.float32)  # pixel centres
        self.img = (np.array(fill, np.float32) if np.ndim(fill) == 2
                    else np.full((n, n), fill, np.float32))

    def box(self, bbox):
        x0, x1, y0, y1 = bbox
        n = self.n
        c0, c1 = max(0, int((x0 + 1) * n / 2 - 0.5)), min(n, int((x1 + 1) * n / 2 + 0.5) + 1)
        r0, r1 = max(0, int((y0 + 1) * n / 2 - 0.5)), min(n, int((y1 + 1) * n / 2 + 0.5) + 1)
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1)), self.c[None, c0:c1], self.c[r0:r1, None]

    def paint(self, shape, value, within=(), where=None):
        """Set ``value`` (number or f(x, y)) on ``shape`` intersected with ``within`` shapes,
        and where ``where(current HU)`` holds."""
        b = self.box(shape.bbox())
        if b is None:
            return
        sl, x, y = b
        m = shape.mask(x, y)
        for w in within:
            m &= w.mask(x, y)
        region = self.img[sl]
        if where is not None:
            m &= where(region)
        if not m.any():
            return
        if callable(value):  # a field over the box; keep the masked part
            region[m] = np.broadcast_to(value(x, y), region.shape)[m]
        else:
            region[m] = value


def _lerp(a, b, u):
    return a + (b - a) * u


class Phantom:
    """A study's 3-D chest; ``slice(k, rng)`` returns its slice k in HU (float32, with noise).

    Build it with :func:`phantom` so that its geometry matches the written series."""

    def __init__(self, spec, rng):
        self.spec = spec
        j = lambda s: float(rng.uniform(-s, s))  # noqa: E731  small anatomical jitter
        self.scale = float(rng.uniform(0.92, 1.04))
        self.body = (j(0.02), 0.02 + j(0.02), 0.84 * self.scale, 0.6 * self.scale)
        self.fat = float(rng.uniform(0.04, 0.08))
        self.lung_hu = float(rng.uniform(-880, -830))
        self.heart = (0.08 + j(0.02), -0.12 + j(0.02))
        self.noise = float(rng.uniform(10, 20))
        self.dx = j(0.015)
        self.rib_phase = float(rng.uniform(0, 1))
        self.c = spec.contrast
        # Small lung vessels: straight 3-D segments, each drawn where a slice cuts it.
        n_v = 24
        self.vessels = []
        for side in (-1, 1):
            for _ in range(n_v):
                ta = float(rng.uniform(-0.05, 0.9))
                tb = ta + float(rng.uniform(0.08, 0.4))
                p = rng.uniform(-0.8, 0.8, size=4)
                self.vessels.append((side, ta, tb, *map(float, p), float(rng.uniform(0.008, 0.02)),
                                     float(rng.uniform(0.35, 0.8))))
        self.flow_t = (float(rng.uniform(0.2, 0.4)), float(rng.uniform(0.45, 0.6)))
        self._base = None

    # -- geometry along t --
    def lungs(self, t):
        prof = float(np.clip(1 - 1.6 * (t - 0.4) ** 2, 0.45, 1.0))
        s = self.scale
        return [Disk(side * 0.38 * s + self.dx, -0.02, 0.27 * s * prof, 0.4 * s * prof)
                for side in (-1, 1)]

    def arteries(self, t):
        """Contrast-filled pulmonary arteries cut by the slice at t: {site: shape}."""
        out = {}
        d = self.dx
        top = (0.06 + d, -0.1)
        if TRUNK_T[0] <= t <= TRUNK_T[1]:
            u = (t - TRUNK_T[0]) / (TRUNK_T[1] - TRUNK_T[0])
            out["trunk"] = Disk(_lerp(0.02, top[0], u), _lerp(-0.22, top[1], u),
                                0.11 * ARTERY_SCALE, 0.11 * ARTERY_SCALE)
        for site, tc, side in (("rpa", RPA_T, -1), ("lpa", LPA_T, 1)):
            if abs(t - tc) < PA_HALF:  # a tube lying in the slice plane: narrower off its axis
                r = 0.095 * ARTERY_SCALE * math.sqrt(1 - ((t - tc) / PA_HALF) ** 2)
                out[site] = Capsule(top[0], top[1], side * 0.36 + d, 0.08, r)
        for side, name in ((-1, "r"), (1, "l")):
            x = side * 0.36 + d
            if 0.08 <= t <= RPA_T:
                u = (RPA_T - t) / (RPA_T - 0.08)
                r = _lerp(0.11, 0.09, u) * ARTERY_SCALE
                out[f"{name}_lower"] = Disk(x + side * 0.02 * u, _lerp(0.08, 0.18, u), r, r)
            if RPA_T + 0.04 <= t <= 0.95:
                u = (t - RPA_T - 0.04) / (0.95 - RPA_T - 0.04)
                r = _lerp(0.1, 0.08, u) * ARTERY_SCALE
                out[f"{name}_upper"] = Disk(x, _lerp(0.06, -0.06, u), r, r)
        return out

    def artery_masks(self, k):
        """{site: bool (matrix, matrix)} of the contrast-filled pulmonary arteries on slice k."""
        out = {}
        for site, shape in self.arteries(self.spec.t[k]).items():
            cv = Canvas(self.spec.matrix, 0.0)
            cv.paint(shape, 1.0)
            out[site] = cv.img > 0
        return out

    def slice(self, k, rng):
        spec = self.spec
        t = spec.t[k]
        bx, by, ax, ay = self.body
        if self._base is None:  # the body outline is the same on every slice: draw it once
            cv = Canvas(spec.matrix, -1000.0)
            cv.paint(Disk(bx, by, ax, ay), -100.0)
            cv.paint(Disk(bx, by, ax - self.fat, ay - self.fat), 40.0)
            self._base = cv.img.copy()
        cv = Canvas(spec.matrix, self._base)
        lungs = self.lungs(t)
        for lung in lungs:  # gravity: posterior lung a little denser
            cv.paint(lung, lambda x, y, ly=lung: self.lung_hu + 50 * (y - ly.cy) / ly.ry)
        c = self.c
        for side, ta, tb, xa, ya, xb, yb, r, f in self.vessels:
            if ta <= t <= tb:
                lung = lungs[(side + 1) // 2]
                u = (t - ta) / (tb - ta)
                cx = lung.cx + lung.rx * _lerp(xa, xb, u)
                cy = lung.cy + lung.ry * _lerp(ya, yb, u)
                cv.paint(Disk(cx, cy, r, r), f * c, within=[lung])
        # Trachea above the carina.
        if t > 0.7:
            cv.paint(Disk(self.dx, 0.12, 0.055, 0.05), -990.0)
        # Heart with the two ventricles (their size ratio is the RV/LV label).
        hx, hy = self.heart
        h = math.sin(math.pi * (t + 0.02) / 0.56) if t < 0.54 else 0.0
        if h > 0.15:
            heart = Disk(hx, hy, 0.26 * h, 0.22 * h)
            cv.paint(heart, 45.0)
            if h > 0.35:
                r_lv = 0.1 * h
                r_rv = r_lv * spec.rv_lv
                cv.paint(Disk(hx - 0.09 * h, hy - 0.05 * h, r_rv, r_rv * 0.85), c, within=[heart])
                cv.paint(Disk(hx + 0.09 * h, hy + 0.05 * h, r_lv, r_lv), 0.75 * c,
                         within=[heart])
        # Aorta: descending, ascending, arch; superior vena cava.
        aorta = 0.65 * c + 40
        if t < 0.84:
            cv.paint(Disk(0.15 + self.dx, 0.3, 0.05, 0.05), aorta)
        if 0.5 < t < 0.84:
            cv.paint(Disk(-0.16 + self.dx, -0.15, 0.055, 0.055), aorta)
            cv.paint(Disk(-0.15 + self.dx, -0.03, 0.035, 0.035), 1.2 * c)
        if 0.8 <= t <= 0.88:
            cv.paint(Capsule(-0.16 + self.dx, -0.15, 0.15 + self.dx, 0.3, 0.05), aorta)
        # Pulmonary arteries (drawn after the aorta so they stay whole).
        arts = self.arteries(t)
        for site, shape in arts.items():
            cv.paint(shape, c)
        if spec.flow and self.flow_t[0] <= t <= self.flow_t[1]:
            # Flow artefact: mild, smooth under-opacification, far brighter than a thrombus.
            for site in ("r_lower", "l_lower"):
                a = arts.get(site)
                if a is not None:
                    cv.paint(a, lambda x, y, a=a: c - 0.3 * c * np.clip((y - a.cy) / a.ry, 0, 1))
        for e in spec.emboli:
            if e.k0 <= k <= e.k1 and e.site in arts:
                self._embolus(cv, arts[e.site], e)
        # Bones: vertebra, spinal canal, spinous process, ribs, sternum.
        s = self.scale
        cv.paint(Disk(self.dx, 0.38 * s, 0.08, 0.075), 700.0)
        cv.paint(Disk(self.dx, 0.38 * s, 0.06, 0.055), 250.0)
        cv.paint(Disk(self.dx, 0.5 * s, 0.032, 0.03), 15.0)
        cv.paint(Disk(self.dx, 0.56 * s, 0.02, 0.035), 650.0)
        for i, ang in enumerate(np.linspace(0.25 * np.pi, 1.75 * np.pi, 10)):
            if math.sin(2 * math.pi * (6 * t + self.rib_phase + 0.13 * i)) > 0.2:
                rx = bx + (ax - self.fat - 0.035) * math.sin(ang)
                ry = by - (ay - self.fat - 0.035) * math.cos(ang)
                cv.paint(Disk(rx, ry, 0.03, 0.022), 650.0)
        if 0.35 < t < 0.95:
            cv.paint(Disk(self.dx, by - ay + self.fat + 0.04, 0.06, 0.025), 500.0)
        img = cv.img
        # Motion: a ghost of the slice, shifted; strong enough to make the exam indeterminate
        # when spec.motion, faint on a diagnostic exam with a qa_motion remark.
        ghost = 0.4 if spec.motion else 0.12 if spec.labels["qa_motion"] else 0.0
        if ghost:
            shift = max(1, int(round(0.03 * spec.matrix)))
            img = (1 - ghost) * img + ghost * np.roll(img, shift, axis=1)
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise)
        return img

    def _embolus(self, cv, art, e):
        ca, sa = math.cos(e.angle), math.sin(e.angle)
        if isinstance(art, Disk):
            r = art.rx
            if e.kind == "acute":  # central defect, contrast all round it
                d = Disk(art.cx + 0.1 * r * ca, art.cy + 0.1 * r * sa, e.size * r, e.size * r)
            else:  # eccentric, against the wall: a crescent
                d = Disk(art.cx + 0.8 * r * ca, art.cy + 0.8 * r * sa, e.size * r, e.size * r)
            cv.paint(d, e.hu, within=[art])
            return
        # A main artery lying in the slice: the defect is a shorter tube inside it.
        dx, dy = art.qx - art.px, art.qy - art.py
        p = (art.px + e.along[0] * dx, art.py + e.along[0] * dy)
        q = (art.px + e.along[1] * dx, art.py + e.along[1] * dy)
        if e.kind == "acute":
            d = Capsule(*p, *q, e.size * art.r)
        else:
            norm = math.hypot(dx, dy)
            side = 1 if sa >= 0 else -1
            ox, oy = -dy / norm * side * 0.8 * art.r, dx / norm * side * 0.8 * art.r
            d = Capsule(p[0] + ox, p[1] + oy, q[0] + ox, q[1] + oy, e.size * art.r)
        cv.paint(d, e.hu, within=[art])


def phantom(spec):
    """(Phantom, rng) of a study, as :func:`render_series` draws it."""
    rng = np.random.default_rng(spec.seed)
    return Phantom(spec, rng), rng


def render_series(spec):
    """Yield (k, HU int16 (matrix, matrix)) for each slice in z order, without the padding
    outside the field of view (:func:`_write_study` adds it to the stored values)."""
    ph, rng = phantom(spec)
    for k in range(spec.n_slices):
        hu = np.clip(np.rint(ph.slice(k, rng)), HU_MIN, HU_MAX).astype(np.int16)
        yield k, hu


def _fov_mask(n):
    c = (np.arange(n) + 0.5) * 2 / n - 1
    return c[None, :] ** 2 + c[:, None] ** 2 > 1.0


def _write_study(spec, root):
    """Render and write one study; return its csv rows (dicts) in z order."""
    series_dir = Path(root) / spec.split / spec.study_uid / spec.series_uid
    series_dir.mkdir(parents=True, exist_ok=True)
    (icp_even, icp_odd), padding = RESCALE_VARIANTS[spec.rescale]
    outside = _fov_mask(spec.matrix)
    r = np.random.default_rng(spec.seed + 1)
    date = f"20{int(r.integers(18, 21))}{int(r.integers(1, 13)):02d}{int(r.integers(1, 29)):02d}"
    header = _series_header(
        spec.study_uid, spec.series_uid, _uid(spec.seed, spec.study_uid, "frame"),
        f"SYN{spec.study_uid[-8:]}", study_date=date, kvp=int(r.choice([100, 120])),
        slice_thickness=spec.spacing)
    spacing = round(spec.fov / spec.matrix, 4)
    x0 = y0 = round(-spec.fov / 2, 3)
    pe = spec.image_labels()
    rows = []
    ts = pydicom.uid.UID(spec.transfer_syntax)
    for k, hu in render_series(spec):
        icp = icp_even if k % 2 == 0 else icp_odd
        stored = (hu.astype(np.int32) - icp).astype(np.int16)
        stored[outside] = padding
        sop = _uid(spec.seed, spec.study_uid, "sop", k)
        _write_dataset(series_dir / f"{sop}.dcm", header, stored, sop_uid=sop,
                       z=round(spec.z0 + k * spec.spacing, 2), x0=x0, y0=y0, spacing=spacing,
                       instance_number=k + 1, intercept=icp, slope=1, transfer_syntax=ts,
                       padding_value=padding)
        rows.append({"StudyInstanceUID": spec.study_uid, "SeriesInstanceUID": spec.series_uid,
                     "SOPInstanceUID": sop, IMAGE_LABEL: int(pe[k]), **spec.labels})
    return rows


def _write_study_star(args):
    return _write_study(*args)


# ----------------------------------------------------------------------------------------------
# The whole data set
# ----------------------------------------------------------------------------------------------

@dataclass
class SyntheticSet:
    """What :func:`generate` made: the root and the truth of both splits (train.csv columns)."""
    root: Path
    train: object          # pandas DataFrame: train.csv
    test_labels: object    # pandas DataFrame: test_labels.csv (train.csv's columns)

    def series_dir(self, split, study, series):
        return self.root / split / study / series


def _manifest(**params):
    return {"generator": "rsna_pe.synthetic", "version": VERSION, **params, "complete": True}


def _read_set(root):
    import pandas as pd
    return SyntheticSet(root, pd.read_csv(root / "train.csv", dtype=str).pipe(_typed),
                        pd.read_csv(root / "test_labels.csv", dtype=str).pipe(_typed))


def _typed(df):
    for c in TRAIN_COLUMNS[len(ID_COLUMNS):]:
        df[c] = df[c].astype(np.int64)
    return df


def generate(out_dir, n_train=40, n_test=10, slices=(30, 50), matrix=512, seed=0, workers=None,
             compressed_fraction=0.3, odd_matrix_fraction=0.15, odd_rescale_fraction=0.2,
             positive_fraction=1 / 3, overwrite=False):
    """Write a synthetic data set in the Kaggle layout under ``out_dir`` and return it.

    ``out_dir`` gets train.csv, test.csv, sample_submission.csv, test_labels.csv (the test
    truth), train/ and test/ (``<study>/<series>/<SOP>.dcm``) and synthetic.json (the
    parameters). A set already there with the same parameters is kept (returned as is); one
    with other parameters is an error unless ``overwrite`` (which deletes only the outputs
    named above, nothing else in ``out_dir``). Outputs without synthetic.json (real data)
    are never deleted.
    ``workers`` processes render studies in parallel (default: all cores; 1 = in-process).
    For tests: ``generate(tmp, 4, 2, slices=(8, 8), matrix=64, workers=1)`` takes about a second.
    """
    import pandas as pd

    from .io import atomic_to_csv, atomic_write_text

    root = Path(out_dir)
    params = dict(n_train=int(n_train), n_test=int(n_test), slices=[int(s) for s in slices],
                  matrix=int(matrix), seed=int(seed),
                  compressed_fraction=float(compressed_fraction),
                  odd_matrix_fraction=float(odd_matrix_fraction),
                  odd_rescale_fraction=float(odd_rescale_fraction),
                  positive_fraction=float(positive_fraction))
    manifest = _manifest(**params)
    if workers is not None and workers < 1:
        raise PipelineError(f"--workers {workers}: at least 1")
    specs = plan(n_train, n_test, slices, matrix, seed, compressed_fraction,
                 odd_matrix_fraction, odd_rescale_fraction, positive_fraction)  # checks, cheap
    existing = [n for n in OUTPUT_NAMES if (root / n).exists()]
    if existing:
        try:
            old = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError):
            old = None
        if old is None:  # never delete what this generator did not write (real data, say)
            raise PipelineError(f"{root} already holds {', '.join(existing)} but no {MANIFEST}: "
                                "not a synthetic set, choose another folder")
        if old == manifest and not overwrite:
            log.info("%s: synthetic set with these parameters already there, kept", root)
            return _read_set(root)
        if old == {**manifest, "complete": False}:
            log.info("%s: finishing an interrupted synthetic set from scratch", root)
        elif not overwrite:
            raise PipelineError(f"{root} already holds a synthetic set with other parameters; "
                                "use --overwrite (or another folder)")
    for n in existing:
        p = root / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    root.mkdir(parents=True, exist_ok=True)
    # Written first so that an interrupted run is known as ours; marked complete at the end.
    atomic_write_text(root / MANIFEST, json.dumps({**manifest, "complete": False}, indent=1) + "\n")
    workers = workers or os.cpu_count() or 1
    jobs = [(s, root) for s in specs]
    if workers == 1 or len(specs) == 1:
        results = [_write_study_star(j) for j in jobs]
    else:
        # Longest studies first for balance; results come back in submission order.
        order = sorted(range(len(jobs)), key=lambda i: -specs[i].n_slices * specs[i].matrix ** 2)
        # spawn, not fork: the caller may hold threads (torch, a test runner) that fork copies.
        with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                                 mp_context=multiprocessing.get_context("spawn")) as pool:
            done = list(pool.map(_write_study_star, [jobs[i] for i in order]))
        results = [None] * len(jobs)
        for i, res in zip(order, done):
            results[i] = res
    frames = {}
    for split_id, split in enumerate(("train", "test")):
        rows = [row for s, res in zip(specs, results) if s.split == split for row in res]
        df = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
        # Kaggle's csv is in no slice order: shuffle rows with the seed.
        perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id, 99)))
        frames[split] = df.iloc[perm.permutation(len(df))].reset_index(drop=True)
    train, test = frames["train"], frames["test"]
    atomic_to_csv(train, root / "train.csv")
    atomic_to_csv(test[list(ID_COLUMNS)], root / "test.csv")
    atomic_to_csv(test, root / "test_labels.csv")
    studies = sorted(test["StudyInstanceUID"].unique())
    ids = [f"{s}_{lab}" for s in studies for lab in EXAM_LABELS] + test["SOPInstanceUID"].tolist()
    atomic_to_csv(pd.DataFrame({"id": ids, "label": 0.5}), root / "sample_submission.csv")
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("%s: %d train + %d test studies, %d + %d images", root, n_train, n_test,
             len(train), len(test))
    return SyntheticSet(root, train, test)
