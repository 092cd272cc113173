"""The whole data set: studies rendered and written in parallel, the csvs, and the marker
(synthetic.json) that tells a finished set with the same parameters from anything else."""
import json
import logging
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from ..core.errors import PipelineError
from ..core.labels import ID_COLUMNS, IMAGE_LABEL, TRAIN_COLUMNS, exam_ids
from .anatomy import render_series
from .dicom import RESCALE_VARIANTS, ids_unchecked, series_header, set_tags, write_dataset
from .plan import plan, uid
from .scanner import ScannerShift

log = logging.getLogger(__name__)

VERSION = 3  # bump when the phantom or the plan changes, so old sets are not taken as current
MANIFEST = "synthetic.json"
OUTPUT_NAMES = ("train", "test", "train.csv", "test.csv", "sample_submission.csv",
                "test_labels.csv", MANIFEST)
STUDY_YEARS = (18, 21)  # study dates 2018-2020 (the upper bound is exclusive)
KVP_CHOICES = (100, 120)
SAMPLE_LABEL = 0.5  # every prediction of sample_submission.csv


@dataclass
class SyntheticSet:
    """What :func:`generate` made: the root and the truth of both splits (train.csv columns)."""
    root: Path
    train: object          # pandas DataFrame: train.csv
    test_labels: object    # pandas DataFrame: test_labels.csv (train.csv's columns)

    def series_dir(self, split, study, series):
        return self.root / split / study / series


def fov_mask(n):
    """(n, n) bool: pixels outside the circular field of view (stored as padding)."""
    c = (np.arange(n) + 0.5) * 2 / n - 1
    return c[None, :] ** 2 + c[:, None] ** 2 > 1.0


def _study_header(spec):
    r = np.random.default_rng(spec.seed + 1)
    date = f"20{int(r.integers(*STUDY_YEARS))}{int(r.integers(1, 13)):02d}{int(r.integers(1, 29)):02d}"
    kvp = int(r.choice(KVP_CHOICES))  # drawn even when a scanner shift sets it: same stream
    shift = spec.scanner
    thickness = spec.spacing if shift is None else round(spec.spacing * shift.thickness_factor, 3)
    header = series_header(
        spec.study_uid, spec.series_uid, uid(spec.seed, spec.study_uid, "frame"),
        f"SYN{spec.study_uid[-8:]}", study_date=date, kvp=kvp, slice_thickness=thickness)
    if shift is not None:
        set_tags(header, shift.header_tags())
    return header


def write_study(spec, root):
    """Render and write one study; return its csv rows (dicts) in z order."""
    series_dir = Path(root) / spec.split / spec.study_uid / spec.series_uid
    series_dir.mkdir(parents=True, exist_ok=True)
    (icp_even, icp_odd), padding = RESCALE_VARIANTS[spec.rescale]
    outside = fov_mask(spec.matrix)
    spacing = round(spec.fov / spec.matrix, 4)
    x0 = y0 = round(-spec.fov / 2, 3)
    pe = spec.image_labels()
    rows = []
    ts = pydicom.uid.UID(spec.transfer_syntax)
    with ids_unchecked([spec.study_uid, spec.series_uid, *(spec.sop_uids or ())]):
        header = _study_header(spec)
        for k, hu in render_series(spec):
            icp = icp_even if k % 2 == 0 else icp_odd
            stored = (hu.astype(np.int32) - icp).astype(np.int16)
            stored[outside] = padding
            sop = spec.sop_uid(k)
            write_dataset(series_dir / f"{sop}.dcm", header, stored, sop_uid=sop,
                          z=spec.z(k), x0=x0, y0=y0, spacing=spacing,
                          instance_number=k + 1, intercept=icp, slope=1, transfer_syntax=ts,
                          padding_value=padding)
            rows.append({"StudyInstanceUID": spec.study_uid, "SeriesInstanceUID": spec.series_uid,
                         "SOPInstanceUID": sop, IMAGE_LABEL: int(pe[k]), **spec.labels})
    return rows


def _write_study_star(args):
    return write_study(*args)


def _write_studies(specs, root, workers):
    """Csv rows of every study, in plan order; ``workers`` processes (1 = in-process)."""
    jobs = [(s, root) for s in specs]
    if workers == 1 or len(specs) == 1:
        return [_write_study_star(j) for j in jobs]
    # Longest studies first for balance; results come back in submission order.
    order = sorted(range(len(jobs)), key=lambda i: -specs[i].n_slices * specs[i].matrix ** 2)
    # spawn, not fork: the caller may hold threads (torch, a test runner) that fork copies.
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)),
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        done = list(pool.map(_write_study_star, [jobs[i] for i in order]))
    results = [None] * len(jobs)
    for i, res in zip(order, done):
        results[i] = res
    return results


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


def _keep_or_clear(root, manifest, overwrite):
    """True when ``root`` already holds this very set (kept); else clear the outputs a former
    set of this generator left there. Never deletes what the generator did not write."""
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
            return True
        if old == {**manifest, "complete": False}:
            log.info("%s: finishing an interrupted synthetic set from scratch", root)
        elif not overwrite:
            raise PipelineError(f"{root} already holds a synthetic set with other parameters; "
                                "use --overwrite (or another folder)")
    for n in existing:
        p = root / n
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return False


def _shuffled_splits(specs, results, seed):
    """{split: DataFrame of its csv rows}, rows shuffled with the seed: Kaggle's csv is in no
    slice order."""
    import pandas as pd
    frames = {}
    for split_id, split in enumerate(("train", "test")):
        rows = [row for s, res in zip(specs, results) if s.split == split for row in res]
        df = pd.DataFrame(rows, columns=list(TRAIN_COLUMNS))
        perm = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(split_id, 99)))
        frames[split] = df.iloc[perm.permutation(len(df))].reset_index(drop=True)
    return frames


def _write_csvs(root, train, test):
    """train.csv, test.csv, test_labels.csv and sample_submission.csv."""
    import pandas as pd

    from ..core.io import atomic_to_csv
    atomic_to_csv(train, root / "train.csv")
    atomic_to_csv(test[list(ID_COLUMNS)], root / "test.csv")
    atomic_to_csv(test, root / "test_labels.csv")
    ids = exam_ids(sorted(test["StudyInstanceUID"].unique())) + test["SOPInstanceUID"].tolist()
    atomic_to_csv(pd.DataFrame({"id": ids, "label": SAMPLE_LABEL}), root / "sample_submission.csv")


def generate(out_dir, n_train=40, n_test=10, slices=(30, 50), matrix=512, seed=0, workers=None,
             compressed_fraction=0.3, odd_matrix_fraction=0.15, odd_rescale_fraction=0.2,
             positive_fraction=1 / 3, overwrite=False, hex_ids=False, scanner=None,
             slice_spacing=None):
    """Write a synthetic data set in the Kaggle layout under ``out_dir`` and return it.

    ``out_dir`` gets train.csv, test.csv, sample_submission.csv, test_labels.csv (the test
    truth), train/ and test/ (``<study>/<series>/<SOP>.dcm``) and synthetic.json (the
    parameters). A set already there with the same parameters is kept (returned as is); one
    with other parameters is an error unless ``overwrite`` (which deletes only the outputs
    named above, nothing else in ``out_dir``). Outputs without synthetic.json (real data)
    are never deleted.
    ``workers`` processes render studies in parallel (default: all cores; 1 = in-process).
    ``hex_ids``: 12-hex-digit study, series and image ids (as in the competition data, e.g.
    ``6897fa9de148``) in the csvs, the paths and the DICOM headers, instead of DICOM UIDs.
    ``scanner``: a :class:`ScannerShift` (or its params() dict): the same studies as another
    site's scanner would image them (docs/synthetic.md); None = no shift.
    ``slice_spacing``: mm between contiguous thin slices over a slab from the ventricles up
    into the pulmonary trunk (:func:`plan`); None = slices spread over the whole chest.
    For tests: ``generate(tmp, 4, 2, slices=(8, 8), matrix=64, workers=1)`` takes about a second.
    """
    from ..core.io import atomic_write_text

    root = Path(out_dir)
    params = dict(n_train=int(n_train), n_test=int(n_test), slices=[int(s) for s in slices],
                  matrix=int(matrix), seed=int(seed),
                  compressed_fraction=float(compressed_fraction),
                  odd_matrix_fraction=float(odd_matrix_fraction),
                  odd_rescale_fraction=float(odd_rescale_fraction),
                  positive_fraction=float(positive_fraction))
    if hex_ids:  # only then: a set made before the option keeps its marker
        params["hex_ids"] = True
    if slice_spacing is not None:  # likewise
        params["slice_spacing"] = float(slice_spacing)
    if not isinstance(scanner, ScannerShift):
        scanner = ScannerShift.from_params(scanner)
    if scanner.params():  # likewise: no shift, no entry
        params["scanner"] = scanner.params()
    manifest = _manifest(**params)
    if workers is not None and workers < 1:
        raise PipelineError(f"--workers {workers}: at least 1")
    specs = plan(n_train, n_test, slices, matrix, seed, compressed_fraction,
                 odd_matrix_fraction, odd_rescale_fraction, positive_fraction,
                 hex_ids=hex_ids, scanner=scanner, slice_spacing=slice_spacing)  # checks, cheap
    if _keep_or_clear(root, manifest, overwrite):
        return _read_set(root)
    root.mkdir(parents=True, exist_ok=True)
    # Written first so that an interrupted run is known as ours; marked complete at the end.
    atomic_write_text(root / MANIFEST, json.dumps({**manifest, "complete": False}, indent=1) + "\n")
    results = _write_studies(specs, root, workers or os.cpu_count() or 1)
    frames = _shuffled_splits(specs, results, seed)
    train, test = frames["train"], frames["test"]
    _write_csvs(root, train, test)
    atomic_write_text(root / MANIFEST, json.dumps(manifest, indent=1) + "\n")
    log.info("%s: %d train + %d test studies, %d + %d images", root, n_train, n_test,
             len(train), len(test))
    return SyntheticSet(root, train, test)
