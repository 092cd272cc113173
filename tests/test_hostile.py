"""Hostile input, collected: what the pipeline reads from archives, CSV files, folder and
file names and others' bundles is data, never markup, a path outside the output, a network
address or a traceback (docs/operations.md#security-and-bad-input).

The bundles here are made from two tiny untrained models (timm's ``test_efficientnet``), and
stage 7 runs a stand-in ensemble, so most tests need no trained workspace."""
import base64
import hashlib
import json
import re
import shutil
import socket
import time
import warnings
from html.parser import HTMLParser
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pydicom
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from support.browser import slice_drawn
from support.prep_data import (
    SIZE,
    file_bytes,
    quiet_write_series,
    run_inline,
    write_dataset,
)
from support.workspace import DEMO, ONE_PAIR

import export_models
import inference
import predict_study
import train_rsna
from rsna_pe.core import cli, ids, paths
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.errors import DicomReadError, PipelineError
from rsna_pe.core.io import atomic_dir
from rsna_pe.core.labels import EXAM_LABELS, IMAGE_LABEL, LABELS, TRAIN_COLUMNS
from rsna_pe.data.dicom import (
    SliceInfo,
    read_series_images,
    read_series_order,
    series_files,
)
from rsna_pe.data.images import conversion_params, jpeg_name
from rsna_pe.infer import bundle
from rsna_pe.infer.ensemble import Ensemble
from rsna_pe.infer.pairs import resolve_pairs
from rsna_pe.metric import postprocess, validate_submission
from rsna_pe.models.networks import build_network
from rsna_pe.serve import study as serve_study
from rsna_pe.train.checkpoint import state_dict
from rsna_pe.viz.report import draw_report
from rsna_pe.viz.viewer import TEMPLATE, render_index, render_viewer, viewer_data

# -----------------------------------------------------------------------------
# Ids as paths, header values, one study failing alone in stage 7

# A SOPInstanceUID like '../x' is an invalid UI value: pydicom warns on reading it, which
# pytest.ini turns into an error; the pipeline's own refusal is what these tests check.
pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI"),
              pytest.mark.filterwarnings("ignore:Invalid value for VR IS")]
RNG = np.random.default_rng(22)


def _volume(n, size=16):
    return RNG.integers(-1000, 1000, size=(n, size, size))


def _series(folder, n=2, z0=0.0, **kw):
    """A small series; returns its SOP ids (given ones, or hex-free UIDs)."""
    return quiet_write_series(folder, _volume(n), z0 + np.arange(n) * 2.5, **kw)


def _set_raw(path, keyword, text):
    """Store ``text`` as the tag's raw value, as a damaged or hostile file would hold it."""
    ds = pydicom.dcmread(path)
    tag, raw = Tag(keyword), text.encode() + b" " * (len(text) % 2)
    ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)


def _outside(root, inside):
    """{relative path: bytes} of every file under ``root`` except those under ``inside``."""
    return {p: b for p, b in file_bytes(root).items() if not (root / p).is_relative_to(inside)}


# ----------------------------------------------------------------------------- the id rule
@pytest.mark.parametrize("value", ["1.2.840.113619.2.55.3", "6897fa9de148", "ANON-0001", "a" * 64,
                                   "123e4567-e89b-12d3-a456-426614174000"])
def test_the_id_rule_accepts_uids_competition_ids_and_archive_ids(value, tmp_path):
    assert ids.is_safe(value)
    assert paths.series_dir(tmp_path, value, value) == tmp_path / value / value


@pytest.mark.parametrize("value", ["..", "../raw", "/etc", "a/b", "a\\b", ".hidden", "-rf", "a_b", "",
                                   "a" * 65, "x\ny", "<img src=x onerror=alert(1)>", "C:x", "é", " 1.2"])
def test_the_id_rule_refuses_paths_and_odd_names_in_one_line_naming_the_series(value, tmp_path):
    assert not ids.is_safe(value)
    for study, series in ((value, "1.2"), ("1.2", value)):
        with pytest.raises(PipelineError) as e:
            paths.series_file(tmp_path, study, series)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"series {ids.show(study)}/{ids.show(series)}")
    with pytest.raises(PipelineError, match="SOPInstanceUID"):
        jpeg_name(0, value)


def test_atomic_dir_never_replaces_a_folder_outside_its_root(tmp_path):
    root, victim = tmp_path / "out", tmp_path / "raw"
    (victim / "s").mkdir(parents=True)
    (victim / "s" / "keep.dcm").write_bytes(b"raw data")
    root.mkdir()
    (root / "study").symlink_to(victim)  # a link planted in the output set
    for final in (root / "study" / "s", root / ".." / "raw" / "s", root):
        with pytest.raises(PipelineError, match="outside the output folder"):
            with atomic_dir(final, root) as tmp:
                (tmp / "new.jpg").write_bytes(b"x")
    assert file_bytes(victim) == {"s/keep.dcm": b"raw data"}


# ----------------------------------------------------------------------------- header values
@pytest.mark.parametrize("keyword, text", [("ImagePositionPatient", "0\\0\\nan"),
                                           ("ImagePositionPatient", "0\\0\\abc"),
                                           ("ImagePositionPatient", "0\\0\\1e999"),
                                           ("ImageOrientationPatient", "1\\0\\0\\0\\inf\\0"),
                                           ("RescaleSlope", "nan"), ("RescaleSlope", "x"),
                                           ("RescaleIntercept", "-inf"), ("RescaleSlope", "1\\2")])
def test_non_finite_or_unparsable_numbers_refuse_the_series_in_one_line(tmp_path, keyword, text):
    _series(tmp_path / "s", n=3)
    bad = series_files(tmp_path / "s")[1]
    _set_raw(bad, keyword, text)
    # Both readers (headers only: stage 1's order and the lung crop; whole files: stages 1, 7
    # and predict_study) refuse; never a traceback, never a series left unsorted.
    for read in (lambda d: read_series_order(d), lambda d: read_series_images(d, [SIZE])):
        with pytest.raises(DicomReadError) as e:
            read(tmp_path / "s")
        assert str(bad) in str(e.value) and keyword in str(e.value) and "\n" not in str(e.value)


def test_unparsable_instance_number_is_only_a_missing_fallback(tmp_path):
    sops = _series(tmp_path / "s", n=3)
    _set_raw(series_files(tmp_path / "s")[0], "InstanceNumber", "x1")
    assert [i.sop for i in read_series_order(tmp_path / "s")] == sops  # positions order the slices
    sops = _series(tmp_path / "t", n=2, drop_tags=("ImagePositionPatient",))
    _set_raw(series_files(tmp_path / "t")[0], "InstanceNumber", "x1")
    with pytest.raises(DicomReadError, match="neither ImagePositionPatient nor InstanceNumber"):
        read_series_order(tmp_path / "t")


@pytest.mark.parametrize("other", [dict(study_uid="9.1", series_uid="9.2"), dict(study_uid="1.1", series_uid="9.2")])
def test_a_folder_with_files_of_two_studies_or_series_is_refused_naming_both(tmp_path, other):
    _series(tmp_path / "s", study_uid="1.1", series_uid="1.2", sop_uids=["1.3.1", "1.3.2"])
    _series(tmp_path / "s", z0=10, sop_uids=["1.3.3", "1.3.4"], **other)
    kind, a, b = ("study", "1.1", "9.1") if other["study_uid"] != "1.1" else ("series", "1.2", "9.2")
    for read in (lambda d: read_series_order(d), lambda d: read_series_images(d, [SIZE])):
        with pytest.raises(DicomReadError, match=rf"more than one {kind}: .*'{a}' and '{b}'"):
            read(tmp_path / "s")


def test_a_missing_sop_id_gets_a_positional_name_never_the_file_name(tmp_path, caplog):
    marker = "DOE^JANE-19700101"  # what an archive may name files after
    _series(tmp_path / "s", n=3, drop_tags=("SOPInstanceUID",), file_names=[f"{marker}-{k}.dcm" for k in range(3)])
    infos, _ = read_series_images(tmp_path / "s", [SIZE])
    assert [i.sop for i in infos] == ["unnamed-0000", "unnamed-0001", "unnamed-0002"]
    assert all(ids.is_safe(i.sop) for i in infos)
    assert "have no SOPInstanceUID" in caplog.text and f"{marker}-0" not in caplog.text


# ----------------------------------------------------------------------------- stages 1, 2 and 4
def _hostile_train(data, tmp_path):
    """Add to train.csv and data/train the series an attacker would: ids that climb back into
    the raw folder or name an absolute path, SOP ids in headers that climb out of the JPEG
    set, a folder with the files of two series. Returns their (study, series)."""
    (study0, series0), _ = write_dataset(data)[:2]
    elsewhere = tmp_path / "elsewhere"
    _series(elsewhere / "1.2.3", sop_uids=["7.1", "7.2"])
    _series(data / "train" / "5.1" / "5.2", study_uid="5.1", series_uid="5.2",
            sop_uids=["../../../up1", "../../../up2"], file_names=["a.dcm", "b.dcm"])
    _series(data / "train" / "6.1" / "6.2", study_uid="6.1", series_uid="6.2", sop_uids=["6.3.1", "6.3.2"])
    _series(data / "train" / "6.1" / "6.2", z0=9, study_uid="6.1", series_uid="6.9", sop_uids=["6.3.3", "6.3.4"])
    df = pd.read_csv(data / "train.csv", dtype=str)
    sops0 = df.SOPInstanceUID[df.SeriesInstanceUID == series0].tolist()
    hostile = {(f"../train/{study0}", series0): sops0, (str(elsewhere), "1.2.3"): ["7.1", "7.2"],
               ("5.1", "5.2"): ["../../../up1", "../../../up2"], ("6.1", "6.2"): ["6.3.1", "6.3.2"]}
    rows = [(st, se, sop) + ("0",) * 14 for (st, se), sops in hostile.items() for sop in sops]
    pd.concat([df, pd.DataFrame(rows, columns=TRAIN_COLUMNS)]).to_csv(data / "train.csv", index=False)
    return set(hostile)


def test_stage1_lists_hostile_series_converts_the_rest_and_touches_nothing_outside(tmp_path):
    data = tmp_path / "data"
    hostile = _hostile_train(data, tmp_path)
    jpegs = paths.jpeg_dir(data, SIZE)
    before = _outside(tmp_path, jpegs)
    with pytest.raises(PipelineError, match=r"4 of 8 series failed"):
        run_inline("make_image.py", tmp_path)
    errors = pd.read_csv(jpegs / "errors.csv", dtype=str, keep_default_na=False)
    assert set(zip(errors.StudyInstanceUID, errors.SeriesInstanceUID)) == hostile
    reasons = dict(zip(errors.StudyInstanceUID, errors.reason))
    assert "StudyInstanceUID" in reasons[next(s for s, _ in hostile if s.startswith(".."))]
    assert "SOPInstanceUID '../../../up1' is not a safe file name" in reasons["5.1"]
    assert "more than one series" in reasons["6.1"] and "'6.2'" in reasons["6.1"] and "'6.9'" in reasons["6.1"]
    # The raw DICOM, the folder named by the absolute id and everything else: as before.
    assert _outside(tmp_path, jpegs) == before
    assert all(p.resolve().is_relative_to(jpegs.resolve()) for p in jpegs.rglob("*"))
    assert len(list(jpegs.glob("*/*/*.jpg"))) == 4 * 2  # the four good series, two slices each

    # Stage 2 drops what stage 1 logged (after folds on all studies); stage 4 packs the rest.
    run_inline("make_csv.py", tmp_path)
    fold = pd.read_csv(paths.fold_csv(data, SIZE), dtype=str)
    assert not set(zip(fold.StudyInstanceUID, fold.SeriesInstanceUID)) & hostile and len(fold) == 8
    run_inline("make_npz.py", tmp_path)
    assert len(list(paths.npz_dir(data, SIZE).glob("*/*.npz"))) == 4


def test_stage4_refuses_ids_of_an_edited_fold_csv_and_packs_the_rest(reference, tmp_path):
    ws = tmp_path / "ws"
    shutil.copytree(reference, ws)
    csv = paths.fold_csv(ws / "data", SIZE)
    fold = pd.read_csv(csv, dtype=str)
    series = sorted(fold.SeriesInstanceUID.unique())
    fold.loc[fold.SeriesInstanceUID == series[0], "StudyInstanceUID"] = "../../../escape"
    fold.loc[fold.SeriesInstanceUID == series[1], "SOPInstanceUID"] = "../../../../up"
    fold.to_csv(csv, index=False)
    npz = paths.npz_dir(ws / "data", SIZE)
    for p in npz.rglob("*.npz"):
        p.unlink()
    before = _outside(tmp_path, npz)
    with pytest.raises(PipelineError, match=r"2 of 4 series failed"):
        run_inline("make_npz.py", ws)
    errors = pd.read_csv(npz / "errors.csv", dtype=str)
    assert sorted(errors.SeriesInstanceUID) == series[:2] and errors.reason.str.contains("not a safe file name").all()
    assert _outside(tmp_path, npz) == before and len(list(npz.glob("*/*.npz"))) == 2


# ----------------------------------------------------------------------------- stage 7
class _Models(Ensemble):
    """Stand-in for the CNN + LSTM pairs: stage 7's own reading and error handling around
    models that predict 0.9 on every slice, fail on 3-slice studies and return NaN on
    4-slice ones (what a real model may do on input it cannot handle)."""
    group = 10 ** 6  # every study in one pass: a failing study must not take the others along
    calibration_info = None  # no calibration: predictions as the models give them

    def __init__(self):
        self.device, self.members = torch.device("cpu"), [None]
        self.prior = dict(zip(LABELS, [0.6, 0.1, 0.05, 0.02, 0.1, 0.2, 0.2, 0.1, 0.2, 0.05]))
        self.sources = [{"cnn": "0" * 64, "rnn": "1" * 64, "where": ["cnn", "rnn"]}]

    def read(self, series_dir):
        return read_series_images(series_dir, [SIZE])

    def predict_many(self, studies):
        lengths = [len(s[SIZE]) for s in studies]
        if 3 in lengths:
            raise RuntimeError("shape mismatch\nin layer 3")
        img = [np.full(n, np.nan if n == 4 else 0.9) for n in lengths]
        return [(postprocess(np.full((1, 9), 0.3), [i])[0], i) for i in img]


def _test_set(data):
    """test.csv and data/test: a good study, ids that are paths, a folder mixing two series,
    a NaN rescale slope, a study the models fail on and one they return NaN for."""
    studies = {"1.1": 2, "../1.1": 2, "3.1": 2, "4.1": 2, "5.1": 3, "6.1": 4}
    rows = []
    for k, (study, n) in enumerate(studies.items()):
        sops = [f"{k + 1}.3.{j}" for j in range(n)]
        if ids.is_safe(study):
            _series(data / "test" / study / f"{study}.2", n=n, study_uid=study, series_uid=f"{study}.2", sop_uids=sops)
        rows += [(study, f"{study}.2", sop) for sop in sops]
    _series(data / "test" / "3.1" / "3.1.2", z0=50, study_uid="3.1", series_uid="3.1.9", sop_uids=["x.1", "x.2"])
    _set_raw(series_files(data / "test" / "4.1" / "4.1.2")[0], "RescaleSlope", "nan")
    pd.DataFrame(rows, columns=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]).to_csv(
        data / "test.csv", index=False)
    return pd.read_csv(data / "test.csv", dtype=str)


def test_stage7_lists_each_failing_study_gives_it_the_prior_and_the_rest_go_on(tmp_path, monkeypatch):
    test = _test_set(tmp_path / "data")
    models = _Models()
    monkeypatch.setattr(inference, "load_ensemble", lambda cfg, device, compile: models)
    args = ["-c", str(CONFIG_DIR / "demo" / "inference.yml"), f"data_dir={tmp_path / 'data'}", "num_workers=0",
            "device=cpu"]
    assert inference.main([*args, f"output_dir={tmp_path / 'out'}"]) == 0
    errors = pd.read_csv(tmp_path / "out" / "errors.csv", dtype=str).set_index("StudyInstanceUID")["reason"]
    assert sorted(errors.index) == ["../1.1", "3.1", "4.1", "5.1", "6.1"]
    assert "not a safe file name" in errors["../1.1"] and "more than one series" in errors["3.1"]
    assert "RescaleSlope" in errors["4.1"] and "RuntimeError: shape mismatch in layer 3" == errors["5.1"]
    assert "not finite" in errors["6.1"] and not errors.str.contains("\n").any()
    # Complete and valid: the good study has the models' prediction, every failed one the prior.
    sub = pd.read_csv(tmp_path / "out" / "submission.csv", dtype={"id": str})
    groups = test.groupby("StudyInstanceUID")["SOPInstanceUID"].apply(list)
    assert validate_submission(sub, list(groups.index), [np.array(s) for s in groups]) == []
    label = sub.set_index("id")["label"]
    assert label[groups["1.1"]].tolist() == [0.9, 0.9]
    for study in errors.index:
        assert np.allclose(label[groups[study]], models.prior[IMAGE_LABEL])
        assert len(label[[f"{study}_{k}" for k in EXAM_LABELS]]) == 9
    with pytest.raises(PipelineError, match="5 of 6 studies unreadable"):
        inference.main([*args, f"output_dir={tmp_path / 'fail'}", "on_error=fail"])
    assert not (tmp_path / "fail" / "submission.csv").exists()


# -----------------------------------------------------------------------------
# Pages: markup, placeholders, privacy, one study failing alone in predict_study

# What an attacker would try: the template's placeholders, markup that ends the data block or
# opens a comment, handlers, JavaScript line terminators, entities, matplotlib math.
HOSTILE = ["__DATA__", "__TITLE__", "__HEADING__", "__CSP__", "__ROWS__", "<!--", "<script>",
           "</script><script>window.pwned=1</script>", "<img src=x onerror=window.pwned=1>",
           "\u2028\u2029", "&amp;&lt;", "' onmouseover='x", '"><b>', "</title>", "]]>", "$\\frac{x$^_"]
TEXT = st.one_of(st.sampled_from(HOSTILE), st.text(max_size=30),
                 st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=8)), max_size=4).map("".join))
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VOID = {"meta", "input", "br", "img", "link", "hr", "base", "source", "wbr"}  # elements without an end


class Parsed(HTMLParser):
    """A page as a browser's tokenizer sees it: its structure (tags with attribute names,
    comments, declarations), each element's attributes and text, by position."""

    def __init__(self, page):
        super().__init__(convert_charrefs=True)
        self.structure, self.elements, self._open = [], [], []
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.structure.append((tag, tuple(sorted(n for n, _ in attrs))))
        self.elements.append({"tag": tag, "attrs": dict(attrs), "text": ""})
        if tag not in VOID:
            self._open.append(self.elements[-1])

    def handle_endtag(self, tag):
        self.structure.append(("/" + tag,))
        while self._open and self._open.pop()["tag"] != tag:
            pass

    def handle_data(self, data):
        if self._open:
            self._open[-1]["text"] += data

    def handle_comment(self, data):
        self.structure.append(("<!--",))

    def handle_decl(self, decl):
        self.structure.append(("<!", decl))

    def unknown_decl(self, data):
        self.structure.append(("<![", data))

    def handle_pi(self, data):
        self.structure.append(("<?", data))

    def find(self, tag, **attrs):
        return [e for e in self.elements
                if e["tag"] == tag and all(e["attrs"].get(k) == v for k, v in attrs.items())]


def _sha256(text):
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _policy(parsed):
    (meta,) = parsed.find("meta", **{"http-equiv": "Content-Security-Policy"})
    return dict(d.strip().split(" ", 1) for d in meta["attrs"]["content"].split(";"))


def _check_policy(parsed, scripts):
    """No inline script but the page's own (by hash), images from data: only, no network, no
    base URI, no form targets."""
    policy = _policy(parsed)
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'none'"
    assert policy["img-src"] == "data:" and policy["base-uri"] == "'none'" and policy["form-action"] == "'none'"
    assert policy["script-src"] == (" ".join(_sha256(s["text"]) for s in scripts) or "'none'")
    assert policy["style-src"] == " ".join(_sha256(s["text"]) for s in parsed.find("style"))


def _viewer(study, series, sops, note, exam):
    previews = np.zeros((len(sops), 3, 8, 8), np.uint8)
    infos = [SliceInfo(None, sop, float(k), k) for k, sop in enumerate(sops)]
    cams = {0: np.ones((8, 8))}
    return viewer_data(study, series, infos, np.linspace(0.1, 0.9, len(sops)), exam, previews, cams, note)


@PROPERTY
@given(study=TEXT, series=TEXT, sops=st.lists(TEXT, min_size=2, max_size=2), note=TEXT,
       labels=st.lists(TEXT, min_size=2, max_size=2, unique=True))
def test_viewer_shows_any_value_as_text(study, series, sops, note, labels):
    data = _viewer(study, series, sops, note, dict(zip(labels, (0.2, 0.7))))
    page = Parsed(render_viewer(data))
    plain = Parsed(render_viewer(_viewer("x", "x", ["x", "y"], "x", {"a": 0.2, "b": 0.7})))
    assert page.structure == plain.structure  # not one element, comment or attribute more
    code = [e for e in page.find("script") if "type" not in e["attrs"]]
    (own,) = re.findall(r"<script>(.*?)</script>", TEMPLATE.read_text(), re.S)
    assert [e["text"] for e in code] == [own]  # the page's own script, unchanged
    _check_policy(page, code)
    (block,) = page.find("script", type="application/json", id="viewer-data")
    assert json.loads(block["text"]) == data  # every value back as it was: none became markup
    assert not re.search("[<>&\u2028\u2029]", block["text"])
    assert page.find("title")[0]["text"] == page.find("h1")[0]["text"] == f"PE viewer: study {study}"


def test_a_value_that_is_not_finite_is_refused_not_written_as_nan():
    """NaN is not JSON: the page's JSON.parse would fail and the viewer stay blank."""
    data = _viewer("1.2", "1.2.3", ["a", "b"], "", {"a": 0.5})
    data["slices"][0]["z"] = float("nan")
    with pytest.raises(PipelineError, match="not finite"):
        render_viewer(data)


def _rows(studies, errors, labels):
    ok = [{"study": studies[0], "href": f"{studies[0]}/viewer.html", "slices": 3, "max_prob": 0.9,
           "exam": {labels[0]: 0.7, labels[1]: 0.2}},
          {"study": studies[1], "href": f"{studies[1]}/viewer.html", "slices": 4, "max_prob": 0.3,
           "exam": {labels[0]: 0.1, labels[1]: 0.6}}]
    return ok, [{"study": studies[2], "error": errors[0]}]


@PROPERTY
@given(studies=st.lists(TEXT, min_size=3, max_size=3), errors=st.lists(TEXT, min_size=1, max_size=1),
       labels=st.lists(TEXT, min_size=2, max_size=2, unique=True))
def test_index_shows_any_value_as_text(studies, errors, labels):
    ok, bad = _rows(studies, errors, labels)
    page = Parsed(render_index(ok + bad))
    plain = Parsed(render_index(sum(_rows(["x", "y", "z"], ["e"], ["a", "b"]), [])))
    assert page.structure == plain.structure
    assert not page.find("script")
    _check_policy(page, [])
    links = page.find("a")
    assert [unquote(a["attrs"]["href"]) for a in links] == [r["href"] for r in ok]  # most probable first
    assert all(re.fullmatch(r"[A-Za-z0-9%/._~-]*", a["attrs"]["href"]) for a in links)  # URL-encoded
    assert [a["text"] for a in links] == [r["study"] for r in ok]
    cells = [e["text"] for e in page.find("td")]
    assert cells[2 * 6:] == ["3", bad[0]["study"], "not read: " + bad[0]["error"]]
    assert cells[5] == labels[0] and cells[11] == labels[1]  # exam labels > 0.5


def test_a_report_title_with_math_characters_is_drawn(tmp_path):
    """A UID holding what matplotlib reads as math ($, ^, _, backslash) is plain text."""
    previews = np.zeros((3, 3, 8, 8), np.uint8)
    draw_report(tmp_path / "r.png", np.array([0.1, 0.8, 0.3]), np.full(9, 0.4), previews,
                {1: np.ones((8, 8))}, title="study $\\frac{x$ 1.2$^$3 a$_$b $\\x$")
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ predict_study on hostile studies
MARKUP = "<img src=x onerror=window.pwned=1>__DATA__<!--"


def _test_series(ws, k):
    test = pd.read_csv(ws / "data" / "test.csv", dtype=str).drop_duplicates("StudyInstanceUID")
    study, series = test.iloc[k][["StudyInstanceUID", "SeriesInstanceUID"]]
    return ws / "data" / "test" / study / series


def _copy_series(src, dst, file_name, edit=None):
    """``src``'s files under ``dst`` as ``<file_name>_<k>.dcm``, each passed through ``edit(ds, k)``."""
    dst.mkdir(parents=True)
    # Hex ids and markup are no valid UIDs: read and written as they are.
    with pydicom.config.disable_value_validation():
        for k, f in enumerate(sorted(src.glob("*.dcm"))):
            ds = pydicom.dcmread(f)
            if edit:
                edit(ds, k)
            ds.save_as(dst / f"{file_name}_{k}.dcm")


def _markup_headers(ds, k):
    ds.StudyInstanceUID = MARKUP
    ds.SOPInstanceUID = f"</script><script>window.pwned=1</script>{k}"


def _no_sop(ds, k):
    if k == 0:
        del ds.SOPInstanceUID


@pytest.fixture(scope="module")
def hostile_split(trained_ws, module_dir):
    """A split folder whose folder and file names carry a patient-like MARKER: a study with
    markup in its headers, one with a file lacking its SOPInstanceUID, one that is no DICOM,
    and one whose prediction raises an unexpected exception type."""
    split = module_dir / "split"
    _copy_series(_test_series(trained_ws, 0), split / "DOE^JOHN_MARKER" / "SER_MARKER", "FILE_MARKER", _no_sop)
    _copy_series(_test_series(trained_ws, 1), split / "ROE^JANE_MARKER" / "SER_MARKER", "FILE_MARKER",
                 _markup_headers)
    (split / "POE^EDGAR_MARKER" / "SER_MARKER").mkdir(parents=True)
    (split / "POE^EDGAR_MARKER" / "SER_MARKER" / "FILE_MARKER.dcm").write_bytes(b"not DICOM")
    _copy_series(_test_series(trained_ws, 2), split / "ZOE^ANN_MARKER" / "SER_MARKER", "FILE_MARKER")
    return split


@pytest.fixture(scope="module")
def hostile_out(trained_ws, hostile_split, module_dir):
    out = module_dir / "out"
    crash = serve_study.activation_maps

    def flaky(ens, images, img, args, series_dir):  # a bug, not a PipelineError
        if "ZOE" in str(series_dir):
            raise ZeroDivisionError(f"division by zero in {series_dir[0]}")  # the series' files
        return crash(ens, images, img, args, series_dir)

    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        # pydicom warns that markup is no valid UID (pytest.ini makes that an error); it is read.
        warnings.filterwarnings("ignore", "Invalid value for VR UI", UserWarning)
        mp.chdir(trained_ws)
        mp.setattr(serve_study, "activation_maps", flaky)
        with pytest.raises(PipelineError) as err:
            predict_study.main([str(hostile_split), "-c", str(DEMO / "inference.yml"), "--out", str(out),
                                *ONE_PAIR, "--preview-size", "64", "--cam-top-k", "1"])
    return out, str(err.value)


def test_one_failing_study_fails_alone_and_every_study_is_listed(hostile_out):
    out, err = hostile_out
    assert "2 of 4 studies failed" in err and "\n" not in err
    page = Parsed((out / "index.html").read_text())
    assert len(page.find("tr")) == 1 + 4  # the header and every study
    reasons = [e["text"] for e in page.find("td", colspan="4")]
    assert len(reasons) == 2 and all(r.startswith("not read: ") for r in reasons)
    assert any("not readable DICOM" in r for r in reasons) and any("ZeroDivisionError" in r for r in reasons)
    links = [a["attrs"]["href"] for a in page.find("a")]
    assert len(links) == 2 and all((out / unquote(h)).is_file() for h in links)
    for f in out.rglob("prediction.json"):  # strict JSON: NaN or Infinity would raise
        json.loads(f.read_text(), parse_constant=lambda c: pytest.fail(f"{f}: {c}"))


def test_no_page_shows_a_file_or_folder_name_or_path(hostile_out, hostile_split):
    out, _ = hostile_out
    pages = [out / "index.html", *out.rglob("viewer.html")]
    assert len(pages) == 3
    for p in pages:
        text = p.read_text()
        assert "MARKER" not in text and str(hostile_split) not in text and str(out) not in text, p
    # The output folders are named by safe StudyInstanceUIDs or by position, never by the input.
    assert not [p for p in out.rglob("*") if "MARKER" in str(p)]
    assert (out / "study-3" / "viewer.html").is_file()  # ROE, the third folder: its UID holds markup


def test_markup_in_headers_stays_text_in_the_browser(hostile_out, chromium):
    """The study with markup in its UIDs: no injected script or element runs or appears, the
    page's own script runs under its policy (the viewer works), the values show as text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    out, _ = hostile_out
    chromium.get((out / "study-3" / "viewer.html").as_uri())
    assert chromium.find_element(By.ID, "slice-count").text != ""  # the own script ran
    WebDriverWait(chromium, 10).until(slice_drawn)  # slices shown
    assert chromium.execute_script("return window.pwned") is None
    assert chromium.execute_script("return document.querySelectorAll('img, script:not([type])').length") == 1
    assert MARKUP in chromium.find_element(By.ID, "uids").text
    assert chromium.title == f"PE viewer: study {MARKUP}"
    assert chromium.find_element(By.ID, "slice-sop").text.startswith("</script><script>window.pwned=1</script>")


# -----------------------------------------------------------------------------
# Bundles and configs

CNN, RNN = "tiny_cnn.fold0.cnn", "tiny_rnn.fold0.rnn"


def _run(root, cfg, record):
    """A run folder with an untrained model's best.ckpt (as the trainer writes it)."""
    run = root / cfg["network"] / cfg["run_name"] / "fold_0"
    run.mkdir(parents=True)
    # A NaN metric (the AUC of a one-class validation set) must not make the bundle invalid JSON.
    torch.save({"config": cfg, "model": state_dict(build_network(cfg)), "record": record, "epoch": 0,
                "step": 1, "metrics": {"val_loss": 0.5, "val_auc": float("nan")}}, run / "best.ckpt")
    (run / "prior.json").write_text(json.dumps({k: 0.25 for k in LABELS}))
    return run / "best.ckpt"


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile_bundle")
    cnn = load_config(DEMO / "train_cnn" / "rexnet200_bce.yml",
                      ["run_name=tiny_cnn", "model.backbone=test_efficientnet", "jpeg_size=32", "dataset.size=32"])
    rnn = load_config(DEMO / "train_rnn" / "rexnet200_bce.yml",
                      ["run_name=tiny_rnn", "dataset.cnn_run=tiny_cnn", "model.input_dim=256",
                       "model.hidden=8", "model.layers=1"])
    jpegs = {"params": {"input_params": {"jpegs": conversion_params(32, 95)}}}
    bundle.export([(_run(root, cnn, jpegs), _run(root, rnn, {}))], root / "bundle")
    return root / "bundle"


@pytest.fixture
def b(tiny_bundle, tmp_path):
    """A copy of the tiny bundle to damage."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is recorded and fails; hub clients are told to stay
    offline, so a retry loop would show up as time, not as a hang."""
    tries = []

    def refuse(*args, **kwargs):
        tries.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return tries


def _rewrite(b, name, data):
    """Replace a bundle file and its manifest hash, as whoever can edit the manifest can."""
    (b / name).write_bytes(data)
    manifest = json.loads((b / "manifest.json").read_text())
    manifest["files"][name] = hashlib.sha256(data).hexdigest()
    (b / "manifest.json").write_text(json.dumps(manifest))


def _edit(b, name, change):
    obj = json.loads((b / name).read_text())
    obj = change(obj) or obj
    if name == "manifest.json":
        (b / name).write_text(json.dumps(obj))
    else:
        _rewrite(b, name, json.dumps(obj).encode())


def _refused(b, *words):
    with pytest.raises(PipelineError) as e:
        bundle.load_bundle(b)
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg
    return msg


def test_the_logged_and_recorded_hashes_are_of_the_bytes_loaded(b, monkeypatch, caplog):
    manifest_sha = hashlib.sha256((b / "manifest.json").read_bytes()).hexdigest()
    weights_sha = hashlib.sha256((b / f"{CNN}.safetensors").read_bytes()).hexdigest()
    real_load = safetensors.torch.load

    def swap_files_then_load(data):
        # Files swapped while the models are built must change nothing: each was read once.
        (b / "manifest.json").write_text((b / "manifest.json").read_text() + " ")
        (b / f"{CNN}.safetensors").write_bytes(b"swapped")
        return real_load(data)

    monkeypatch.setattr(safetensors.torch, "load", swap_files_then_load)
    with caplog.at_level("INFO", logger="rsna_pe.infer.bundle"):
        members, prior, sources = bundle.load_bundle(b)
    assert f"manifest sha256 {manifest_sha}" in caplog.text
    assert sources[0]["cnn"] == weights_sha and len(members) == 1 and prior == {k: 0.25 for k in LABELS}


def test_export_writes_strict_json(tiny_bundle):
    entry = (tiny_bundle / f"{CNN}.json").read_text()
    assert "NaN" not in entry and json.loads(entry)["source"]["metrics"] == {"val_loss": 0.5, "val_auc": None}


@pytest.mark.parametrize("name", ["hf-hub:timm/rexnet_200.nav_in1k", "hf_hub:timm/rexnet_200", "timm/rexnet_200",
                                  "local-dir:/tmp/model", "../test_efficientnet", "no_such_net", 5])
def test_a_hub_or_path_backbone_is_refused_offline_in_one_line(b, no_network, name):
    def hub(entry):
        entry["config"]["model"]["backbone"] = name
    _edit(b, f"{CNN}.json", hub)
    start = time.monotonic()
    _refused(b, f"{CNN}.json", "config.model.backbone", "not a timm architecture name")
    assert time.monotonic() - start < 5 and not no_network  # no hub retries, no connection


def test_pretrained_settings_of_a_bundle_are_never_followed(b, no_network):
    # Followed, these would download or read weights; the bundle's own weights replace them.
    def pretrained(entry):
        entry["config"]["model"].update(pretrained=True, pretrained_file="/nowhere/weights.pth")
    _edit(b, f"{CNN}.json", pretrained)
    members, _, _ = bundle.load_bundle(b)
    assert len(members) == 1 and not no_network


def _set(path, value):
    """A change that sets the dotted ``path`` of a JSON file to ``value`` (a list index by number)."""
    def change(obj):
        *parents, last = path.split(".")
        node = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[int(last) if isinstance(node, list) else last] = value
    return change


def _drop(path):
    def change(obj):
        *parents, last = path.split(".")
        for p in parents:
            obj = obj[p]
        del obj[last]
    return change


# (file, its damage, words the one-line error must hold: the file and the key)
DAMAGE = [
    ("manifest.json", _set("format_version", True), ["manifest.json", "format version True"]),
    ("manifest.json", _set("format_version", 1.0), ["manifest.json", "format version 1.0"]),
    ("manifest.json", _drop("files"), ["manifest.json", "key 'files' is missing"]),
    ("manifest.json", _set("files", []), ["manifest.json", "key 'files' is a list, expected a mapping"]),
    ("manifest.json", _set("pairs", {"cnn": CNN, "rnn": RNN}), ["manifest.json", "key 'pairs' is a mapping"]),
    ("manifest.json", _set("pairs", []), ["manifest.json", "key 'pairs' is empty"]),
    ("manifest.json", _set("pairs.0.cnn", f"sub/{CNN}"), ["manifest.json", "pairs.0.cnn", "not a plain file name"]),
    ("manifest.json", _set("pairs.0.rnn", ["x"]), ["manifest.json", "key 'pairs.0.rnn' is a list"]),
    ("manifest.json", lambda m: m["files"].update({f"{CNN}.json": 5}), ["manifest.json", "no sha256"]),
    ("manifest.json", _set("postprocess", "other"), ["manifest.json", "key 'postprocess'"]),
    (f"{CNN}.json", lambda e: ["not", "a", "mapping"], [f"{CNN}.json", "key 'kind' is missing (the file is a list)"]),
    (f"{CNN}.json", _set("kind", "rnn"), [f"{CNN}.json", "'kind'", "pairs it as the cnn"]),
    (f"{CNN}.json", _set("config", [1]), [f"{CNN}.json", "key 'config.network' is missing ('config' is a list)"]),
    (f"{CNN}.json", _drop("config.dataset.fold"), [f"{CNN}.json", "key 'config.dataset.fold' is missing"]),
    (f"{CNN}.json", _set("config.dataset.fold", "0"), [f"{CNN}.json", "'config.dataset.fold' is a string"]),
    (f"{CNN}.json", _set("config.dataset.size", True), [f"{CNN}.json", "'config.dataset.size' is a boolean"]),
    (f"{CNN}.json", _set("config.dataset.size", 0), [f"{CNN}.json", "'config.dataset.size' is 0, expected 1 to"]),
    (f"{CNN}.json", _set("config.dataset.size", -64), [f"{CNN}.json", "'config.dataset.size' is -64"]),
    (f"{CNN}.json", _set("weights", f"../{CNN}.safetensors"), [f"{CNN}.json", "'weights'", "not a plain file name"]),
    (f"{CNN}.json", _set("config.model.hidden", [256]), [f"{CNN}.json", "key 'config' is not usable"]),
    (f"{CNN}.json", _set("config.model.exam_targets", "all"), [f"{CNN}.json", "key 'config'"]),
    (f"{CNN}.json", _set("record", {"params": []}), [f"{CNN}.json", "key 'record' is not usable"]),
    (f"{CNN}.json", _set("record.params.input_params", {}), [f"{CNN}.json", "no record of the JPEG set"]),
    (f"{RNN}.json", _set("config.model", []), [f"{RNN}.json", "'config.model' is a list, expected a mapping"]),
    (f"{RNN}.json", _set("config.model.head", {"x": 1}), [f"{RNN}.json", "key 'config'"]),
    ("prior.json", _set("mean", {"pe_present_on_image": 0.5}), ["prior.json", "key 'mean'"]),
    ("prior.json", lambda p: [p], ["prior.json", "key 'mean' is missing (the file is a list)"]),
]


@pytest.mark.parametrize("name,change,words", DAMAGE, ids=[f"{n}-{w[-1]}" for n, _, w in DAMAGE])
def test_structural_damage_is_one_line_naming_file_and_key(b, name, change, words):
    _edit(b, name, change)
    assert _refused(b, *words).count(name) == 1  # the file, named once


@pytest.mark.parametrize("name,data,words", [
    (f"{CNN}.json", b"{not json", ["not valid JSON"]),
    (f"{CNN}.json", b'{"kind": NaN}', ["not valid JSON", "NaN"]),  # Python's json would take it
    ("manifest.json", b"\xff\xfe[", ["not valid JSON"]),
    ("manifest.json", b"[" * 100000, ["not valid JSON"]),
    (f"{CNN}.safetensors", b"\xff" * 16, ["not a safetensors file"]),
    (f"{CNN}.safetensors", (2**40).to_bytes(8, "little") + b"{}", ["not a safetensors file"]),
], ids=["not-json", "nan", "not-utf8", "deep-nesting", "bad-header", "huge-header"])
def test_files_that_do_not_parse_are_one_line_naming_them(b, name, data, words):
    if name == "manifest.json":
        (b / name).write_bytes(data)
    else:
        _rewrite(b, name, data)
    _refused(b, name, *words)


@pytest.mark.parametrize("name", ["prior.json", f"{CNN}.safetensors", "manifest.json", "unlisted"])
def test_symlinks_are_refused_even_to_identical_files(b, tmp_path, name):
    outside = tmp_path / "outside"
    outside.mkdir()
    if (b / name).exists():
        (b / name).rename(outside / name)  # same bytes: the hash alone would pass it
    (b / name).symlink_to(outside / name)
    _refused(b, f"{name}: a symbolic link")


def test_folder_names_are_refused_not_cut(b):
    # The old loader cut a pair name to its last part: sub/X.json was read as X.json.
    (b / "sub").mkdir()
    shutil.copy(b / f"{CNN}.json", b / "sub" / f"{CNN}.json")
    _edit(b, "manifest.json", _set("pairs.0.cnn", f"sub/{CNN}"))
    _refused(b, "manifest.json", "'pairs.0.cnn'", "not a plain file name")
    _edit(b, "manifest.json", _set("pairs.0.cnn", CNN))
    _edit(b, "manifest.json", lambda m: m["files"].update(sub="0" * 64))  # a folder listed as a file
    _refused(b, "sub: not a regular file")


# ----------------------------------------------------------------------------- configs
def _yaml(path, text):
    path.write_text(text)
    return path


def test_base_loops_and_bad_bases_are_one_line(tmp_path):
    a, c = tmp_path / "a.yml", tmp_path / "c.yml"
    _yaml(a, "base: b.yml\nx: 1\n")
    _yaml(tmp_path / "b.yml", "base: [c.yml]\n")
    _yaml(c, "base: a.yml\n")
    with pytest.raises(PipelineError, match=r"bases loop \(a.yml -> b.yml -> c.yml -> a.yml\)"):
        load_config(a)
    _yaml(c, "base: c.yml\n")
    with pytest.raises(PipelineError, match=r"c.yml -> c.yml"):
        load_config(c)
    for bad in ("5", "[c.yml, 5]", "{x: 1}", "true"):
        _yaml(c, f"base: {bad}\n")
        with pytest.raises(PipelineError, match="key 'base' must be a file name or a list of file names"):
            load_config(c)


def test_a_base_shared_twice_is_no_loop(tmp_path):
    # a -> [b, c], both -> d: d is read twice, which is not a loop.
    _yaml(tmp_path / "d.yml", "x: 1\ny: 1\n")
    _yaml(tmp_path / "b.yml", "base: d.yml\ny: 2\n")
    _yaml(tmp_path / "c.yml", "base: d.yml\n")
    cfg = load_config(_yaml(tmp_path / "a.yml", "base: [b.yml, c.yml]\n"))
    assert (cfg["x"], cfg["y"]) == (1, 1)


def test_override_yaml_errors_and_empty_run_lists(tmp_path):
    cfg = DEMO / "inference.yml"
    with pytest.raises(PipelineError, match=r"override folds=\[1,: not a YAML value"):
        load_config(cfg, ["folds=[1,"])
    assert load_config(cfg, ["output_dir=[1,"])["output_dir"] == "[1,"  # a string key takes the text
    for key in ("folds", "models"):
        with pytest.raises(PipelineError, match=f"key '{key}' must be a non-empty list"):
            load_config(cfg, [f"{key}=[]"])
    with pytest.raises(PipelineError, match="key 'seeds' must be a non-empty list"):
        load_config(DEMO / "train_cnn" / "rexnet200_bce.yml", ["seeds=[]"])
    own = _yaml(tmp_path / "mine.yml", f"base: {cfg}\nfolds: []\n")  # an empty list in a file, too
    with pytest.raises(PipelineError, match="key 'folds' must be a non-empty list"):
        load_config(own)


@pytest.mark.parametrize("override,words", [
    ("models=[5]", "key 'models' must be a non-empty list of {cnn: ..., rnn: ...}"),
    ("models=[{cnn: a}]", "key 'models'"),
    ("folds=[true]", "key 'folds' must list fold numbers"),
    ("checkpoints=[{cnn: 5, rnn: b}]", "key 'checkpoints'"),
])
def test_wrong_types_in_the_model_lists_are_one_line(override, words):
    with pytest.raises(PipelineError) as e:
        resolve_pairs(load_config(DEMO / "inference.yml", [override]))
    assert words in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("stage,argv", [
    (export_models, ["--out", "unused", "folds=[]"]),
    (export_models, ["--out", "unused", "checkpoints=[{cnn: 1"]),
    (train_rsna, ["-c", "LOOP", "dataset.fold=0"]),
    # a config without its base: every key of the stage's own config is missing
    (export_models, ["--out", "unused", "-c", "EMPTY"]),
    (inference, ["-c", "EMPTY"]),
    (predict_study, ["unused", "-c", "EMPTY"]),
])
def test_bad_configs_exit_2_with_one_line(stage, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _yaml(tmp_path / "loop.yml", "base: loop.yml\n")
    _yaml(tmp_path / "empty.yml", "base: ''\n")
    files = {"LOOP": "loop.yml", "EMPTY": "empty.yml"}
    argv = [str(tmp_path / files[a]) if a in files else a for a in argv]
    with pytest.raises(SystemExit) as e:
        cli.run(lambda: stage.main(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not (tmp_path / "unused").exists()


def test_page_reasons_hide_names_with_tabs_and_double_spaces(tmp_path):
    # whitespace in a name must not let it through once the reason is made one line
    root = tmp_path / "in"
    files = [root / "DOE\tJOHN7" / "s" / "DOE\tJOHN7-1.dcm", root / "SMITH  ANNA" / "ANNA  X.dcm"]
    for f in files:
        err = PipelineError(f"{f.parent}: 1 file not readable DICOM (first: {f}: bad)")
        text = predict_study.page_reason(err, root, [f])
        assert "JOHN" not in text and "ANNA" not in text and "\n" not in text, text


def test_a_study_named_like_the_index_gets_a_positional_folder():
    assert predict_study.output_names(["index.html", "1.2.3", None]) == ["study-1", "1.2.3", "study-3"]
