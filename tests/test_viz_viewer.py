"""The study viewer: predict_study's viewer.html and index.html, their size, privacy, and the
page itself driven in headless Chromium."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pydicom
import pytest

import predict_study
from rsna_pe.data.dicom import SliceInfo, hu_to_image
from rsna_pe.viz.viewer import render_viewer, viewer_data
from support.browser import slice_drawn
from support.workspace import DEMO, ONE_PAIR

MARKERS = {"PatientName": "ZZMARKER^NAME", "PatientID": "ZZMARKERID77", "PatientBirthDate": "19010203"}


def _predict(ws, folder, out, *extra):
    predict_study.main([str(folder), "-c", str(DEMO / "inference.yml"), "--out", str(out), *ONE_PAIR,
                        "--preview-size", "64", *extra])


def _first_series(ws):
    test = pd.read_csv(ws / "data" / "test.csv", dtype=str)
    study, series = test.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]]
    return ws / "data" / "test" / study / series


@pytest.fixture(scope="module")
def viewer(trained_ws, module_dir):
    """A viewer of one test study whose files carry patient tags set to marker strings."""
    src = _first_series(trained_ws)
    series = module_dir / "tagged" / "study" / "series"
    shutil.copytree(src, series)
    for f in series.glob("*.dcm"):
        ds = pydicom.dcmread(f)
        for tag, value in MARKERS.items():
            setattr(ds, tag, value)
        ds.save_as(f)
    out = module_dir / "viewer"
    out.mkdir()
    mp = pytest.MonkeyPatch()
    mp.chdir(trained_ws)
    try:
        _predict(trained_ws, series, out, "--cam-top-k", "2")
    finally:
        mp.undo()
    return out, json.loads((out / "prediction.json").read_text())


def test_viewer_is_self_contained_and_carries_no_patient_tags(viewer):
    out, pred = viewer
    page = (out / "viewer.html").read_text()
    for value in MARKERS.values():
        assert value not in page
    assert str(out) not in page and "series_dir" not in page  # no paths either
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|url\(|@import", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}
    data = json.loads(re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1))
    assert data["study"] == pred["study"] and data["series"] == pred["series"]
    assert [s["sop"] for s in data["slices"]] == [s["sop"] for s in pred["slices"]]
    assert all(s["img"].startswith("data:image/webp;base64,") for s in data["slices"])
    with_map = [k for k, s in enumerate(data["slices"]) if s["cam"]]
    assert with_map == pred["activation_map_slices"] and len(with_map) == 2
    top2 = np.argsort([-s["pe_present_on_image"] for s in pred["slices"]], kind="stable")[:2]
    assert with_map == sorted(top2.tolist())
    assert data["exam"] == pred["exam"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _ct_like(n, size=512, seed=0):
    """HU slices with CT-like structure and noise (body, lungs with texture, vessels, bone)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    out = []
    for k in range(n):
        hu = np.full((size, size), -1000.0)
        hu[(xx / 0.45) ** 2 + (yy / 0.33) ** 2 < 1] = 40
        for cx in (-0.2, 0.2):
            lung = ((xx - cx) / 0.16) ** 2 + (yy / 0.24) ** 2 < 1
            hu[lung] = -850 + 60 * rng.standard_normal(lung.sum())
        for cx, cy, r in rng.uniform((-0.35, -0.25, 0.01), (0.35, 0.25, 0.04), (12, 3)):
            hu[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = rng.choice([300, 700])
        out.append(hu + 15 * rng.standard_normal(hu.shape))
    return np.stack(out)


def _page_bytes(n, cams):
    hu = _ct_like(n)
    previews = np.stack([hu_to_image(h, 256).transpose(2, 0, 1) for h in hu])
    infos = [SliceInfo(None, f"1.2.3.{k}", float(k), k) for k in range(n)]
    maps = {k: np.outer(np.hanning(256), np.hanning(256)) for k in range(n)} if cams else {}
    data = viewer_data("1.2", "1.2.3", infos, np.linspace(0, 1, n), {"negative_exam_for_pe": 0.2},
                       previews, maps)
    return len(render_viewer(data).encode())


def test_viewer_size_budget_for_a_500_slice_study():
    """Bytes per slice at the default 256 px previews with a map on every slice, measured from
    two page sizes; 500 slices must stay under about 30 MB."""
    small, large = _page_bytes(2, cams=True), _page_bytes(6, cams=True)
    per_slice = (large - small) / 4
    fixed = small - 2 * per_slice
    print(f"viewer: {per_slice / 1e3:.1f} kB per slice, {fixed / 1e3:.1f} kB fixed, "
          f"500 slices {(fixed + 500 * per_slice) / 1e6:.1f} MB")
    assert fixed + 500 * per_slice < 30e6


def test_split_folder_gives_a_viewer_per_study_and_an_index(trained_ws, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_ws)
    _predict(trained_ws, trained_ws / "data" / "test", tmp_path, "--cam-top-k", "1")
    studies = sorted(p.name for p in (trained_ws / "data" / "test").iterdir())
    index = (tmp_path / "index.html").read_text()
    links = re.findall(r"href='([^']+)/viewer.html'", index)
    assert sorted(links) == studies
    probs = [max(s["pe_present_on_image"] for s in
                 json.loads((tmp_path / s / "prediction.json").read_text())["slices"]) for s in links]
    assert probs == sorted(probs, reverse=True)  # most probable first
    assert all((tmp_path / s / "viewer.html").is_file() for s in studies)


def _shown(browser):
    from selenium.webdriver.common.by import By

    prob = browser.find_element(By.ID, "slice-prob")
    return int(browser.find_element(By.ID, "slice-index").text), prob.text, float(prob.get_attribute("data-prob"))


def _check_slice(browser, pred, k):
    index, text, prob = _shown(browser)
    want = pred["slices"][k]["pe_present_on_image"]
    assert index == k and prob == pytest.approx(want, rel=1e-12) and text == f"{want:.4f}"


def test_browser_slider_keys_and_curve_click_move_through_slices(viewer, chromium):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    out, pred = viewer
    n = len(pred["slices"])
    chromium.get((out / "viewer.html").as_uri())
    start = int(np.argmax([s["pe_present_on_image"] for s in pred["slices"]]))
    _check_slice(chromium, pred, start)  # opens on the most probable slice
    slider = chromium.find_element(By.ID, "slice-slider")
    key = Keys.ARROW_LEFT if start == n - 1 else Keys.ARROW_RIGHT
    slider.send_keys(key)
    moved = start - 1 if key == Keys.ARROW_LEFT else start + 1
    _check_slice(chromium, pred, moved)
    target = 0 if moved != 0 else n - 1
    chromium.find_element(By.ID, f"pt-{target}").click()
    _check_slice(chromium, pred, target)
    assert int(slider.get_attribute("value")) == target
    assert chromium.execute_script("return document.querySelectorAll('canvas.slice').length") == 3
    WebDriverWait(chromium, 10).until(slice_drawn)


