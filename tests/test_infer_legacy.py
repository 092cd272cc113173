"""Models written by an earlier version of the code (tests/fixtures/legacy, made by
tests/fixtures/make_legacy.py before the package was split by role) still load and predict the
same: a bundle through predict_study.py, a CNN checkpoint through the checkpoint loader."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import predict_study
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.train.checkpoint import load_trained

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
EXPECTED = json.loads((LEGACY / "expected.json").read_text())


def test_legacy_bundle_predicts_as_before(tmp_path, one_thread):
    predict_study.main([str(LEGACY / "studies"), "-c", str(CONFIG_DIR / "demo" / "inference.yml"),
                        f"bundle={LEGACY / 'bundle'}", "--out", str(tmp_path), "--cam-top-k", "0"])
    got = {}
    for p in tmp_path.rglob("prediction.json"):
        pred = json.loads(p.read_text())
        got[pred["study"]] = pred
    studies = [k for k in EXPECTED if k != "cnn.ckpt"]
    assert sorted(got) == sorted(studies)
    for study in studies:
        want = EXPECTED[study]
        np.testing.assert_allclose([got[study]["exam"][k] for k in want["exam"]], list(want["exam"].values()),
                                   atol=1e-6)
        np.testing.assert_allclose([s["pe_present_on_image"] for s in got[study]["slices"]], want["slices"],
                                   atol=1e-6)


def test_legacy_checkpoint_loads_and_gives_the_same_logits(one_thread):
    model, ckpt = load_trained(LEGACY / "cnn.ckpt")
    assert ckpt["config"]["model"]["backbone"] == "test_efficientnet"
    size = int(ckpt["config"]["dataset"]["size"])
    x = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, size, size)).astype(np.float32))
    with torch.no_grad():
        logits = model(x)
    np.testing.assert_allclose(logits.numpy(), EXPECTED["cnn.ckpt"], atol=1e-5)
    # the fixture must be able to fail: other inputs give other logits
    with torch.no_grad():
        assert not np.allclose(model(x.flip(-1)).numpy(), EXPECTED["cnn.ckpt"], atol=1e-7)
