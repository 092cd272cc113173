"""CT series in any folder tree, found by content, and the series to predict in each study.

Archives and CDs hand out files without a ``.dcm`` extension, in folders of any name (or under
a DICOMDIR), and a CTPA study holds several series: a localizer, thin and thick axials,
reformats. ``discover`` walks a tree, reads the header of every file that is DICOM by content
(the 128-byte preamble and "DICM", DICOM PS3.10 section 7.1; a file named ``*.dcm`` claims to
be DICOM, so one that is not is reported as in the Kaggle layout), groups the images by
StudyInstanceUID and SeriesInstanceUID, and picks per study the series to predict by the rule
of ``series_selection`` (configs/inference.yml, docs/dicom.md); every other series is skipped
with its reason, logged. A DICOMDIR is passed over (not an image; the headers already say
which image belongs where). Files without the preamble are not read: forced, pydicom reads any
bytes as a dataset, and media written to the standard carry the preamble.

predict_study and the DICOM node read this way, and stage 7 with ``input_layout: any``
(``tree_split``); otherwise stages 1-7 read the Kaggle layout (rsna_pe.data.dicom), where a
series folder holding another series' files stays an error.
"""
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, DicomReadError, PipelineError
from ..core.ids import checked, show
from .dicom import finite_numbers, hex_uids_accepted, read_dataset, series_where

log = logging.getLogger(__name__)

MAGIC_AT, MAGIC = 128, b"DICM"
DIRECTORY_STORAGE = "1.2.840.10008.1.3.10"  # Media Storage Directory Storage: a DICOMDIR
PREFERENCES = ("thinnest", "most_images")  # the orders ``prefer`` may name
RULE_KEYS = ("modality", "image_type", "max_tilt", "max_gap", "prefer")
SAME_POSITION_MM = 1e-3  # images closer than this along the slice normal share a position
ORIENTATION_DECIMALS = 3  # direction cosines equal to this many decimals: one orientation


def has_dicom_marker(path):
    """Whether a file holds "DICM" after its 128-byte preamble (a DICOM PS3.10 file)."""
    try:
        with open(path, "rb") as f:
            head = f.read(MAGIC_AT + len(MAGIC))
    except OSError:
        return False
    return head[MAGIC_AT:] == MAGIC


@dataclass
class Image:
    """The header facts of one image that grouping and the rule look at."""
    path: Path
    study: str
    series: str
    modality: str
    image_type: tuple          # upper-case values
    orientation: tuple | None  # ImageOrientationPatient (6 values), None: absent
    position: tuple | None     # ImagePositionPatient (3 values), None: absent
    thickness: float | None    # SliceThickness
    sop: str | None = None     # SOPInstanceUID


@dataclass
class Series:
    """One series' images and what the rule needs of them."""
    study: str
    uid: str
    files: list                     # Path, sorted
    modality: str
    image_type: tuple
    normal: np.ndarray | None       # the slice normal, None: see ``orientation_problem``
    orientation_problem: str | None
    positions: list | None          # sorted positions along the normal (mm), None: not every image has one
    thickness: float | None         # SliceThickness of the first image, else the median step
    sops: list = field(default_factory=list)  # SOPInstanceUID of each file (None: absent)

    def describe(self):
        thick = "unknown" if self.thickness is None else f"{self.thickness:.3g} mm"
        return f"{len(self.files)} images, {self.modality or 'no Modality'}, slices {thick}"


@dataclass
class Study:
    """One study of a tree: its series, the one to predict (None: none fits) and the others
    with the reason each was skipped."""
    uid: str
    series: list
    chosen: Series | None
    skipped: list = field(default_factory=list)  # [(Series, reason)]

    @property
    def files(self):
        return sorted(f for s in self.series for f in s.files)

    @property
    def where(self):
        return series_where(self.files)

    def to_predict(self):
        """The chosen series; a study without one is a one-line error with every skip's reason."""
        if self.chosen is None:
            why = "; ".join(f"series {show(s.uid)}: {r}" for s, r in self.skipped)
            raise PipelineError(f"{self.where}: study {show(self.uid)}: no series fits the rule ({why})")
        return self.chosen


@dataclass
class Unreadable:
    """A folder's files that claim to be DICOM but whose headers cannot be read."""
    folder: Path
    reasons: list  # [(path, one-line reason)]

    uid = None      # no study: its files were not read
    skipped = ()    # nor series

    @property
    def files(self):
        return [p for p, _ in self.reasons]

    @property
    def where(self):
        return str(self.folder)

    def to_predict(self):
        """Never a series: the one-line error naming the folder, how many files, the first reason."""
        n, first = len(self.reasons), self.reasons[0][1]
        raise DicomReadError(self.folder, f"{n} file{'s' * (n > 1)} not readable DICOM (first: {first})")


@dataclass
class Found:
    """What ``discover`` found under ``root``: each study, each folder of unreadable files, and
    whether the root itself holds DICOM files (it is one series' or one study's folder)."""
    root: Path
    studies: list
    unreadable: list
    flat: bool

    def entries(self):
        """Studies and folders of unreadable files in one order: by their first file's path."""
        return sorted([*self.studies, *self.unreadable], key=lambda e: e.files[0].parts)


def check_rule(rule):
    """The ``series_selection`` keys, checked: a bad value stops with one line."""
    missing = [k for k in RULE_KEYS if k not in rule]
    if missing:
        raise ConfigError(f"series_selection: key {missing[0]!r} missing")
    odd = [p for p in rule["prefer"] if p not in PREFERENCES]
    if odd:
        raise ConfigError(f"series_selection.prefer: {odd[0]!r} is none of {', '.join(PREFERENCES)}")
    if rule["max_tilt"] is not None and not 0 <= rule["max_tilt"] <= 90:
        raise ConfigError(f"series_selection.max_tilt: {rule['max_tilt']} is not 0 to 90 degrees (null: any)")
    if rule["max_gap"] is not None and rule["max_gap"] < 1:
        raise ConfigError(f"series_selection.max_gap: {rule['max_gap']} is under 1 (null: unchecked)")
    return rule


def _walk(root):
    """Every file under ``root``, in a fixed order; folder links are not followed (no loops)."""
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _values(ds, keyword, path, n):
    """A numeric tag's ``n`` values as a tuple, None when absent or of another length."""
    numbers = finite_numbers(ds, keyword, path)
    return tuple(numbers) if numbers is not None and len(numbers) == n else None


def read_image(path):
    """A file's header facts (Image), or "DICOMDIR" (passed over); a header that cannot be read
    or names no study or series (every image does: a damaged or truncated file, which pydicom
    reads without complaint) is a one-line DicomReadError."""
    ds = read_dataset(path, header_only=True)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPClassUID", "")) == DIRECTORY_STORAGE:
        return "DICOMDIR"
    try:
        with hex_uids_accepted():
            study, series = (str(ds.get(k) or "") for k in ("StudyInstanceUID", "SeriesInstanceUID"))
            if not (study and series):
                raise DicomReadError(path, "not readable DICOM (no StudyInstanceUID or SeriesInstanceUID "
                                     "in its header: damaged or truncated?)")
            thickness = finite_numbers(ds, "SliceThickness", path)
            return Image(path, study, series, str(ds.get("Modality") or "").upper(),
                         tuple(str(v).upper() for v in (ds.get("ImageType") or ())),
                         _values(ds, "ImageOrientationPatient", path, 6),
                         _values(ds, "ImagePositionPatient", path, 3),
                         thickness[0] if thickness else None, str(ds.get("SOPInstanceUID") or "") or None)
    except DicomReadError:
        raise
    except Exception as e:  # pydicom converts values lazily and raises many types
        raise DicomReadError(path, f"unreadable header value ({type(e).__name__}: {e})") from None


def read_tree(root):
    """-> (images [Image], {folder: [(path, reason)]} of unreadable files, {why: count} of the
    files passed over)."""
    images, unreadable, passed = [], {}, {}
    for path in _walk(root):
        if not (has_dicom_marker(path) or path.suffix.lower() == ".dcm"):
            passed["not DICOM"] = passed.get("not DICOM", 0) + 1
            continue
        try:
            image = read_image(path)
        except DicomReadError as e:
            unreadable.setdefault(path.parent, []).append((path, str(e)))
            continue
        if isinstance(image, str):
            passed[image] = passed.get(image, 0) + 1
        else:
            images.append(image)
    return images, unreadable, passed


def _normal(images):
    """(the series' slice normal, None) or (None, why there is none)."""
    orientations = {None if i.orientation is None else tuple(np.round(i.orientation, ORIENTATION_DECIMALS))
                    for i in images}
    if None in orientations:
        return None, "no ImageOrientationPatient on every image"
    if len(orientations) > 1:
        return None, f"images in {len(orientations)} orientations"
    o = np.array(images[0].orientation)
    n = np.cross(o[:3], o[3:])
    if np.linalg.norm(n) < 0.5:  # rows and columns must be (about) perpendicular unit vectors
        return None, "ImageOrientationPatient is no pair of perpendicular directions"
    return n / np.linalg.norm(n), None


def make_series(images):
    """A Series of one series' images (any order)."""
    images = sorted(images, key=lambda i: i.path.parts)
    first = images[0]
    normal, problem = _normal(images)
    positions = None
    if normal is not None and all(i.position is not None for i in images):
        positions = sorted(float(np.dot(normal, i.position)) for i in images)
    thickness = first.thickness
    if thickness is None and positions and len(positions) > 1:
        thickness = float(np.median(np.diff(positions)))
    return Series(first.study, first.series, [i.path for i in images], first.modality, first.image_type,
                  normal, problem, positions, thickness, [i.sop for i in images])


def _gap_problem(positions, max_gap):
    """Why positions are not contiguous (a shared position, a gap over ``max_gap`` times the
    median step), None when they are."""
    if positions is None:
        return "no ImagePositionPatient or ImageOrientationPatient on every image"
    steps = np.diff(positions)
    if not len(steps):
        return None
    shared = int((steps < SAME_POSITION_MM).sum())
    if shared:
        return f"{shared} image(s) at another image's position (a second pass, or copies)"
    median = float(np.median(steps))
    if steps.max() > max_gap * median:
        return f"not contiguous: a gap of {steps.max():.3g} mm where images lie {median:.3g} mm apart"
    return None


def refusal(s, rule):
    """Why the rule does not take series ``s`` (one line), None when it does."""
    if rule["modality"] and s.modality not in [m.upper() for m in rule["modality"]]:
        return f"Modality {show(s.modality)} is not {' or '.join(rule['modality'])}"
    lacks = [v for v in rule["image_type"] if v.upper() not in s.image_type]
    if lacks:
        value = "\\".join(s.image_type)[:80] or "absent"  # as DICOM writes it; no "/": pages hide paths
        return f"ImageType {value} lacks {' and '.join(lacks)}"
    if rule["max_tilt"] is not None:
        if s.normal is None:
            return f"not axial: {s.orientation_problem}"
        tilt = math.degrees(math.acos(min(1.0, abs(float(s.normal[2])))))
        if tilt > rule["max_tilt"]:
            return f"not axial: slices {tilt:.0f} degrees from the axial plane (at most {rule['max_tilt']:g})"
    if rule["max_gap"] is not None:
        return _gap_problem(s.positions, rule["max_gap"])
    return None


def _rank(s, prefer):
    keys = {"thinnest": math.inf if s.thickness is None else s.thickness, "most_images": -len(s.files)}
    return (*(keys[p] for p in prefer), s.uid)  # the UID last: a tie is still decided


def _lost_to(s, chosen, prefer):
    """Why ``s``, a series the rule takes, ranks after the chosen one."""
    for p in prefer:
        if p == "thinnest" and s.thickness != chosen.thickness:
            mm = ["unknown" if t is None else f"{t:.3g} mm" for t in (s.thickness, chosen.thickness)]
            return f"thicker slices than the chosen series ({mm[0]}, chosen {mm[1]})"
        if p == "most_images" and len(s.files) != len(chosen.files):
            return f"fewer images than the chosen series ({len(s.files)}, chosen {len(chosen.files)})"
    return "equal to the chosen series by the rule; its SeriesInstanceUID sorts later"


def choose(study, series, rule):
    """Study ``study`` of ``series``: the one the rule ranks first, the others skipped with why."""
    fits, skipped = [], []
    for s in sorted(series, key=lambda s: s.files[0].parts):
        why = refusal(s, rule)
        if why is None:
            fits.append(s)
        else:
            skipped.append((s, why))
    fits.sort(key=lambda s: _rank(s, rule["prefer"]))
    chosen = fits[0] if fits else None
    skipped += [(s, _lost_to(s, chosen, rule["prefer"])) for s in fits[1:]]
    return Study(study, sorted(series, key=lambda s: s.files[0].parts), chosen, skipped)


def log_choice(study):
    """One line for the series predicted (or none), one per series skipped, with the reason."""
    if study.chosen is None:
        log.warning("study %s: no series fits the rule (%d series)", show(study.uid), len(study.series))
    else:
        log.info("study %s: predicting series %s (%s; %d of %d series fit the rule)", show(study.uid),
                 show(study.chosen.uid), study.chosen.describe(), len(study.series) - len(study.skipped),
                 len(study.series))
    for s, why in study.skipped:
        log.info("study %s: skipped series %s (%s): %s", show(study.uid), show(s.uid), s.describe(), why)


def discover(root, rule):
    """The studies under ``root`` (any tree), each with the series to predict by ``rule`` (the
    ``series_selection`` keys), and the folders whose DICOM files cannot be read; all logged."""
    root = Path(root)
    check_rule(rule)
    images, unreadable, passed = read_tree(root)
    groups = {}
    for i in images:
        groups.setdefault(i.study, {}).setdefault(i.series, []).append(i)
    studies = [choose(study, [make_series(imgs) for imgs in series.values()], rule)
               for study, series in groups.items()]
    studies.sort(key=lambda s: s.files[0].parts)
    if passed:
        log.info("%s: passed over %s", root, ", ".join(f"{n} file(s): {why}" for why, n in sorted(passed.items())))
    for folder, reasons in unreadable.items():
        log.warning("%s: %d file(s) not readable DICOM (first: %s)", folder, len(reasons), reasons[0][1])
    for study in studies:
        log_choice(study)
    flat = any(i.path.parent == root for i in images) or root in unreadable
    return Found(root, studies, [Unreadable(f, r) for f, r in unreadable.items()], flat)


def tree_split(root, rule):
    """Stage 7 on any tree (``input_layout: any``): every study found under ``root`` with its
    chosen series. -> ({study: Series}, [(study or "", one-line reason)] for studies that cannot
    be predicted: no series fits the rule, a StudyInstanceUID unfit for a submission id
    (rsna_pe.core.ids), an image without SOPInstanceUID, a folder of unreadable files)."""
    chosen, refused = {}, []
    for entry in discover(root, rule).entries():
        try:
            series = entry.to_predict()
            checked(entry.uid, "StudyInstanceUID", f"study {show(entry.uid)}")
            if None in series.sops:
                raise DicomReadError(series.files[series.sops.index(None)], "no SOPInstanceUID in its header")
        except PipelineError as e:
            refused.append((entry.uid or "", " ".join(str(e).split())))
            continue
        chosen[entry.uid] = series
    return chosen, refused
