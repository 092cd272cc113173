"""Thin slices (slice_spacing, the bench_thin profile): contiguous slices as far apart as asked,
clots and labels that agree, neighbours that show neighbouring anatomy; and without the option
the generator writes the very bytes it wrote before the option existed."""
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pydicom
import pytest
from test_synthetic import _hu, _rule_violations, _series_by_z

import make_synthetic_data
from rsna_pe import synthetic as sy
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.labels import IMAGE_LABEL
from rsna_pe.synthetic.plan import SERIES_LENGTH_MM, THIN_FIRST_T

# Every storage variant, both splits, positives and negatives, in a second.
TINY = dict(n_train=4, n_test=2, slices=(3, 5), matrix=32, seed=5, workers=1,
            compressed_fraction=0.5, odd_matrix_fraction=0.3, odd_rescale_fraction=0.5,
            positive_fraction=0.5)
# tree_hash of generate(**TINY), recorded with the generator as it was before slice_spacing
# existed. A legitimate change of the default output bumps dataset.VERSION and records anew.
TINY_SHA256 = "1437759a08845fd6ab65ffcab662d662900f8004eb9f0bbd60bc9b817bf2c9c5"
THIN = dict(n_train=6, n_test=2, slices=(16, 24), matrix=64, seed=1, workers=1,
            positive_fraction=0.5, slice_spacing=2.0)


def tree_hash(root):
    """sha256 over every file's relative path and bytes, in path order."""
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def test_without_the_option_the_bytes_are_those_of_before(tmp_path):
    assert tree_hash(sy.generate(tmp_path / "default", **TINY).root) == TINY_SHA256
    assert tree_hash(sy.generate(tmp_path / "none", slice_spacing=None, **TINY).root) == TINY_SHA256
    # The hash sees a change: the same studies on thin slices hash otherwise.
    thin = sy.generate(tmp_path / "thin", slice_spacing=1.5, **TINY).root
    assert tree_hash(thin) != TINY_SHA256
    assert json.loads((thin / sy.MANIFEST).read_text())["slice_spacing"] == 1.5
    assert "slice_spacing" not in json.loads((tmp_path / "default" / sy.MANIFEST).read_text())


@pytest.mark.parametrize("mm", [1.25, 2.0, 0.625])
def test_thin_slices_are_contiguous_and_spaced_as_asked(mm):
    for spec in sy.plan(40, 10, slices=(16, 24), matrix=64, seed=2, slice_spacing=mm):
        t = np.asarray(spec.t)
        step = np.diff(t)
        assert spec.spacing == mm and 16 <= spec.n_slices <= 24
        assert THIN_FIRST_T[0] <= t[0] <= THIN_FIRST_T[1]
        # One step in t is the spacing over the study's chest length, the same all along.
        assert np.allclose(step, step[0], atol=2e-5) and step[0] > 0
        assert SERIES_LENGTH_MM[0] - 1 <= mm / step[0] <= SERIES_LENGTH_MM[1] + 1
        z = [spec.z(k) for k in range(spec.n_slices)]
        assert np.allclose(np.diff(z), mm, atol=1e-9)


@pytest.fixture(scope="module")
def thin_set(module_dir):
    return sy.generate(module_dir / "thin", **THIN)


def test_thin_dicom_positions_and_thickness(thin_set):
    for spec in sy.plan(**{k: v for k, v in THIN.items() if k != "workers"}):
        _, heads = _series_by_z(thin_set.series_dir(spec.split, spec.study_uid, spec.series_uid))
        z = [float(h.ImagePositionPatient[2]) for h in heads]
        assert len(z) == spec.n_slices and np.allclose(np.diff(z), THIN["slice_spacing"], atol=1e-9)
        assert {float(h.SliceThickness) for h in heads} == {THIN["slice_spacing"]}
        assert [int(h.InstanceNumber) for h in heads] == list(range(1, spec.n_slices + 1))


def test_thin_labels_agree_with_the_clots_in_the_pixels(thin_set):
    """Image labels 1 exactly where a clot is drawn (a defect below 120 HU in its artery),
    arteries all contrast elsewhere; exam labels by the competition's rules."""
    truth = pd.concat([thin_set.train, thin_set.test_labels])
    checked_pos = checked_neg = 0
    for spec in sy.plan(**{k: v for k, v in THIN.items() if k != "workers"}):
        ph, _ = sy.phantom(spec)
        files, heads = _series_by_z(thin_set.series_dir(spec.split, spec.study_uid, spec.series_uid))
        rows = truth.set_index("SOPInstanceUID").loc[[h.SOPInstanceUID for h in heads]]
        pe = spec.image_labels()
        assert rows[IMAGE_LABEL].tolist() == pe.tolist()
        assert _rule_violations(rows.iloc[0], pe.tolist()) == []
        clean = not (spec.labels["qa_motion"] or spec.labels["qa_contrast"])
        for k, f in enumerate(files):
            hu, on = _hu(f)[1], {e.site for e in spec.emboli if e.k0 <= k <= e.k1}
            assert bool(pe[k]) == bool(on)
            for site, m in ph.artery_masks(k).items():
                if site in on:
                    assert np.sort(hu[m])[:3].mean() < 120, (spec.study_uid, k, site)
                    checked_pos += 1
                elif not pe[k] and clean:
                    assert hu[m].min() > 120, (spec.study_uid, k, site)
                    checked_neg += 1
    assert checked_pos >= 20 and checked_neg >= 50


def test_thin_slab_keeps_every_planned_finding():
    # The same seed plans the same cases; on the slab every positive exam keeps its clots and
    # every central one a central clot (in an artery the slab holds).
    whole = sy.plan(240, 0, slices=(16, 24), matrix=64, seed=0, positive_fraction=0.5)
    thin = sy.plan(240, 0, slices=(16, 24), matrix=64, seed=0, positive_fraction=0.5, slice_spacing=2.0)
    for a, b in zip(whole, thin):
        assert _rule_violations(b.labels, b.image_labels()) == [], b.study_uid
        sides = ("leftsided_pe", "rightsided_pe")  # lobar clots go where the slab reaches
        assert {k: v for k, v in b.labels.items() if k not in sides} == {
            k: v for k, v in a.labels.items() if k not in sides} and a.study_uid == b.study_uid
        for e in b.emboli:  # each run lies inside its site's range of t
            lo, hi = sy.SITE_T[e.site]
            assert lo <= b.t[e.k0] <= b.t[e.k1] <= hi
    assert sum(s.labels["central_pe"] for s in thin) == 24
    assert any(e.site == "trunk" for s in thin for e in s.emboli)


def _artery_overlap(spec):
    """Mean IoU of the pulmonary arteries on neighbouring slices."""
    ph, _ = sy.phantom(spec)
    masks = [np.any(list(ph.artery_masks(k).values()) or [np.zeros((spec.matrix,) * 2, bool)], axis=0)
             for k in range(spec.n_slices)]
    return np.mean([(a & b).sum() / max(1, (a | b).sum()) for a, b in zip(masks, masks[1:])])


def test_neighbouring_thin_slices_show_neighbouring_anatomy():
    plan = dict(n_train=4, n_test=0, slices=(16, 24), matrix=64, seed=1)
    thin = [_artery_overlap(s) for s in sy.plan(**plan, slice_spacing=2.0)]
    whole = [_artery_overlap(s) for s in sy.plan(**plan)]
    assert min(thin) > 0.9 and max(whole) < 0.85, (thin, whole)


@pytest.mark.parametrize("mm", [0, -1.0, math.nan, math.inf, 6.0])
def test_slice_spacing_is_checked(mm):
    with pytest.raises(PipelineError, match="slice-spacing"):
        sy.plan(2, 0, slices=(16, 24), matrix=32, slice_spacing=mm)  # 24 x 6 mm: past the apex


def test_a_thin_set_is_not_taken_for_a_whole_chest_one(tmp_path):
    small = dict(n_train=2, n_test=0, slices=(3, 3), matrix=32, workers=1)
    sy.generate(tmp_path, **small)
    with pytest.raises(PipelineError, match="overwrite"):
        sy.generate(tmp_path, slice_spacing=2.0, **small)
    assert make_synthetic_data.parse_args(["d", "--slice-spacing", "1.25"]).slice_spacing == 1.25
    assert make_synthetic_data.parse_args(["d"]).slice_spacing is None
    one = next((tmp_path / "train").rglob("*.dcm"))
    assert float(pydicom.dcmread(one, stop_before_pixels=True).SliceThickness) > 50  # whole chest
