"""The plan of a data set: which study gets which ids, slices, storage variants, findings and
labels. Cheap (nothing is drawn), done up front; the same seed gives the same plan."""
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ..core.errors import PipelineError
from .dicom import COMPRESSION_CYCLE, RESCALE_VARIANTS
from .findings import assign_cases, draw_emboli, draw_rv_lv, exam_labels, quality

UID_ROOT = "rsna-pe-synthetic"

# Slices cover the chest from the lung bases (t = 0) to the apices (t = 1), give or take.
T_FIRST, T_LAST = (-0.03, 0.03), (0.97, 1.03)
SERIES_LENGTH_MM = (250, 330)  # z extent; the slice spacing is this over the slice count
Z0_MM = (-400, -150)  # z of the first slice
# Thin slices (slice_spacing): a contiguous slab of the slice count x the spacing, on a chest of
# SERIES_LENGTH_MM from t 0 to 1, its first slice drawn in THIN_FIRST_T: where the ventricles
# still show (the RV/LV labels), so that the slab reaches up into the pulmonary trunk.
THIN_FIRST_T = (0.36, 0.44)
FOV_MM = (320, 380)  # field of view; the pixel spacing is this over the matrix
ODD_MATRICES = (448, 576)  # per 512: 7/8 and 9/8 of the matrix
MIN_ODD_MATRIX = 8

# Kaggle-style ids: 12 hex digits, a keyed bijection of (kind, split, study, slice) packed in
# 48 bits, so ids are unique by construction and look random.
HEX_KINDS = {"study": 0, "series": 1, "sop": 2}
HEX_STUDY_BITS, HEX_SLICE_BITS = 21, 24  # with 2 bits of kind and 1 of split: 48
_MASK48 = (1 << 48) - 1
_MIX = 0x9E3779B97F4B  # odd: multiplying by it is a bijection mod 2^48


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
    sop_uids: list = None  # per slice (z order); None: derived from seed and study_uid
    scanner: object = None  # a ScannerShift (another site's scanner); None: today's images

    def image_labels(self):
        pe = np.zeros(self.n_slices, np.int64)
        for e in self.emboli:
            pe[e.k0:e.k1 + 1] = 1
        return pe

    def z(self, k):
        """ImagePositionPatient z of slice k, mm (rounded well below any spacing asked)."""
        return round(self.z0 + k * self.spacing, 4)

    def sop_uid(self, k):
        return self.sop_uids[k] if self.sop_uids else uid(self.seed, self.study_uid, "sop", k)


def uid(seed, *parts):
    """A DICOM UID derived from the seed and the parts."""
    return generate_uid(entropy_srcs=[UID_ROOT, str(seed), *map(str, parts)])


def hex_id(seed, kind, split_id, index, k=0):
    """A 12-hex-digit id, as the competition names studies, series and images."""
    x = (((HEX_KINDS[kind] << 1 | split_id) << HEX_STUDY_BITS | index) << HEX_SLICE_BITS) | k
    key = hashlib.sha256(f"{UID_ROOT}:{seed}".encode()).digest()
    for r in range(3):
        x = (x * _MIX + int.from_bytes(key[8 * r:8 * r + 6], "big")) & _MASK48
        x ^= x >> 24
    return f"{x:012x}"


def _hex_ids(spec, seed, split_id):
    """The spec with Kaggle-style study, series and SOP ids."""
    spec.study_uid = hex_id(seed, "study", split_id, spec.index)
    spec.series_uid = hex_id(seed, "series", split_id, spec.index)
    spec.sop_uids = [hex_id(seed, "sop", split_id, spec.index, k) for k in range(spec.n_slices)]
    return spec


def _odd_matrices(matrix):
    return tuple(max(MIN_ODD_MATRIX, 2 * int(round(matrix * m / 512 / 2))) for m in ODD_MATRICES)


def _check(n_train, n_test, lo, hi, matrix, fractions, hex_ids, slice_spacing):
    if lo < 1 or hi < lo:
        raise PipelineError(f"--slices {lo} {hi}: need 1 <= MIN <= MAX")
    if slice_spacing is not None:
        _check_spacing(slice_spacing, hi)
    if n_train < 0 or n_test < 0 or n_train + n_test < 1:
        raise PipelineError("need at least one study (--n-train/--n-test)")
    if matrix < 16:
        raise PipelineError(f"--matrix {matrix}: at least 16")
    for name, f in fractions.items():
        if not 0 <= f <= 1:
            raise PipelineError(f"{name} {f}: must lie in [0, 1]")
    if hex_ids and (max(n_train, n_test) >= 1 << HEX_STUDY_BITS or hi >= 1 << HEX_SLICE_BITS):
        raise PipelineError(f"--hex-ids: at most {(1 << HEX_STUDY_BITS) - 1} studies per split "
                            f"and {(1 << HEX_SLICE_BITS) - 1} slices per series")


def _check_spacing(mm, hi):
    try:
        ok = math.isfinite(mm) and mm > 0
    except TypeError:
        ok = False
    if not ok:
        raise PipelineError(f"--slice-spacing {mm}: a number of mm above 0")
    if hi * mm > SERIES_LENGTH_MM[0] * (1 - THIN_FIRST_T[1]):
        raise PipelineError(f"--slice-spacing {mm} with up to {hi} slices: a slab of {hi * mm:g} mm "
                            "runs past the chest's apex; fewer or thinner slices, or leave the "
                            "option out for whole-chest series")


def plan(n_train, n_test, slices=(30, 50), matrix=512, seed=0, compressed_fraction=0.3,
         odd_matrix_fraction=0.15, odd_rescale_fraction=0.2, positive_fraction=1 / 3,
         hex_ids=False, scanner=None, slice_spacing=None):
    """Decide every study: ids, slice count and positions, variants, findings and labels.

    ``hex_ids``: studies, series and images get 12-hex-digit ids as in the competition data
    (e.g. ``6897fa9de148``) instead of DICOM UIDs. ``scanner``: a ScannerShift every study is
    acquired with; it changes no id, finding or label (the same seed, the same patients).
    ``slice_spacing``: mm between contiguous thin slices over a slab from the ventricles up
    into the pulmonary trunk (THIN_FIRST_T), as real CTPA slices are 1-2.5 mm apart; None:
    the slices spread over the whole chest (a spacing of the chest's length over their count)."""
    scanner = scanner if scanner is not None and scanner.params() else None
    lo, hi = (int(s) for s in slices)
    _check(n_train, n_test, lo, hi, matrix,
           {"compressed_fraction": compressed_fraction, "odd_matrix_fraction": odd_matrix_fraction,
            "odd_rescale_fraction": odd_rescale_fraction, "positive_fraction": positive_fraction},
           hex_ids, slice_spacing)
    specs = []
    for split_id, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        if n == 0:
            continue
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id,)))
        cases = assign_cases(rng, n, positive_fraction)
        variants = _assign_variants(rng, n, matrix, compressed_fraction, odd_matrix_fraction,
                                    odd_rescale_fraction)
        for i in range(n):
            r = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id, i, 1)))
            spec = _study_spec(r, seed, split, i, cases[i], variants[i], lo, hi, slice_spacing)
            spec.scanner = scanner
            specs.append(_hex_ids(spec, seed, split_id) if hex_ids else spec)
    return specs


def _assign_variants(rng, n, matrix, compressed_fraction, odd_matrix_fraction,
                     odd_rescale_fraction):
    """Per study: (matrix, transfer syntax, rescale variant), exact shares, shuffled."""
    n_odd = int(round(odd_matrix_fraction * n))
    mats = [matrix] * (n - n_odd) + [_odd_matrices(matrix)[i % 2] for i in range(n_odd)]
    n_comp = int(round(compressed_fraction * n))
    tss = ([str(COMPRESSION_CYCLE[i % len(COMPRESSION_CYCLE)]) for i in range(n_comp)]
           + [str(ExplicitVRLittleEndian)] * (n - n_comp))
    n_resc = int(round(odd_rescale_fraction * n))
    odd = [v for v in RESCALE_VARIANTS if v != "standard"]
    rescs = [odd[i % len(odd)] for i in range(n_resc)] + ["standard"] * (n - n_resc)
    for x in (mats, tss, rescs):
        rng.shuffle(x)
    return list(zip(mats, tss, rescs))


def _slice_positions(r, lo, hi):
    """(slice count, t of each slice, spacing mm, z of the first slice mm)."""
    s = int(r.integers(lo, hi + 1))
    t0, t1 = r.uniform(*T_FIRST), r.uniform(*T_LAST)
    t = (t0 + (np.arange(s) + 0.5) / s * (t1 - t0)).round(5).tolist()
    spacing = round(float(r.uniform(*SERIES_LENGTH_MM)) / s, 2)
    z0 = round(float(r.uniform(*Z0_MM)), 2)
    return s, t, spacing, z0


def _thin_positions(r, lo, hi, mm):
    """(slice count, t of each slice, spacing mm, z of the first slice mm) of a thin slab."""
    s = int(r.integers(lo, hi + 1))
    first = float(r.uniform(*THIN_FIRST_T))
    # Drawn and unused (where a whole-chest series ends), so that the rest of the study
    # (quality, findings) draws as on the whole chest: the same seed, the same patients.
    r.uniform()
    chest = float(r.uniform(*SERIES_LENGTH_MM))  # mm from t 0 to t 1
    t = (first + np.arange(s) * mm / chest).round(5).tolist()
    z0 = round(float(r.uniform(*Z0_MM)), 2)
    return s, t, round(float(mm), 4), z0


def _study_spec(r, seed, split, i, case, variant, lo, hi, slice_spacing=None):
    kind, sub, central, rv_gte = case
    matrix, ts, rescale = variant
    thin = slice_spacing is not None
    s, t, spacing, z0 = (_thin_positions(r, lo, hi, slice_spacing) if thin
                         else _slice_positions(r, lo, hi))
    qa, contrast, motion, flow = quality(r, kind, sub)
    # On a thin slab a central clot goes to a central artery the slab holds, if any.
    emboli = draw_emboli(r, t, sub, central, central_in_view=thin) if kind == "positive" else []
    rv_lv = draw_rv_lv(r, rv_gte)
    return StudySpec(
        split=split, index=i, seed=int(r.integers(2 ** 31)),
        study_uid=uid(seed, split, i, "study"), series_uid=uid(seed, split, i, "series"),
        n_slices=s, t=t, z0=z0, spacing=spacing, matrix=matrix,
        fov=round(float(r.uniform(*FOV_MM)), 1), transfer_syntax=ts, rescale=rescale,
        contrast=contrast, rv_lv=rv_lv, motion=motion, flow=flow,
        labels=exam_labels(emboli, kind, rv_gte, qa), emboli=emboli)
