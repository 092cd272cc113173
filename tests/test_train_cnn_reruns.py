"""Stage 3 runs across reruns: a kill at any write resumes to the same weights; a run whose
inputs changed stops until overwrite=true."""
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import train_rsna
from rsna_pe.core import io as rsna_io
from rsna_pe.core import paths
from rsna_pe.core.config import REPO_ROOT
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import CRASH_ENV, CRASH_EXIT_CODE
from rsna_pe.records import provenance
from support.cnn_data import DEMO_CFG, overrides, run_main, write_data, write_records
from support.workspace import SUB_ENV

pytestmark = pytest.mark.usefixtures("one_thread")  # in-process and subprocess runs alike


@pytest.fixture(scope="module")
def data(module_dir):
    return write_data(module_dir / "data")


def test_killed_at_any_write_resumes_to_identical_weights(data, tmp_path, monkeypatch):
    """Killed (subprocess, RSNA_PE_CRASH_AT_WRITE) after a validation's top-k/best writes but
    before its last.ckpt, then at the final write, then rerun: best.ckpt and last.ckpt hold the
    weights of an uninterrupted run, and no temporaries are left."""
    writes = []
    logged_path = rsna_io.atomic_path

    @contextlib.contextmanager
    def logged(final, suffix=""):
        writes.append(Path(final).name)
        with logged_path(final, suffix) as tmp:
            yield tmp

    monkeypatch.setattr(rsna_io, "atomic_path", logged)
    run_main(["-c", str(DEMO_CFG), *overrides(data, tmp_path / "ref")])  # one thread, as below
    monkeypatch.undo()
    lasts = [i for i, name in enumerate(writes) if name == "last.ckpt"]
    resumed = ["config.yaml", *writes[lasts[0] + 1:]]  # a run resuming after the 1st validation
    argv = [sys.executable, str(REPO_ROOT / "src" / "train_rsna.py"), "-c", str(DEMO_CFG),
            *overrides(data, tmp_path / "crash")]
    for at in (lasts[1] + 1, len(resumed)):  # the 2nd validation's last.ckpt, the final write
        r = subprocess.run(argv, env={**SUB_ENV, CRASH_ENV: str(at)}, capture_output=True, text=True, timeout=300)
        assert r.returncode == CRASH_EXIT_CODE, r.stderr[-3000:]
    r = subprocess.run(argv, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ref, run = (paths.run_dir(tmp_path / d, "rexnet200_bce", 0) for d in ("ref", "crash"))
    for name in ("best.ckpt", "last.ckpt"):
        want, got = (torch.load(r / name, weights_only=True)["model"] for r in (ref, run))
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), name
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    assert not list(run.rglob("*.tmp"))


def test_stale_inputs_stop_a_run_until_overwrite(data, tmp_path):
    """The JPEG set remade with another quality: a finished run stops with a one-line error;
    overwrite=true trains it again from scratch."""
    shutil.copytree(data, tmp_path / "data")
    argv = ["-c", str(DEMO_CFG), *overrides(tmp_path / "data", tmp_path / "out", **{
        "train.epochs": 1, "train.max_steps_per_epoch": 1, "train.val_per_epoch": 1})]
    run_main(argv)
    run = paths.run_dir(tmp_path / "out", "rexnet200_bce", 0)
    first = provenance.read_record(run)
    write_records(tmp_path / "data", quality=90)
    with pytest.raises(PipelineError, match=r"training run .*input_params\.jpegs\.quality: 95 -> 90.*overwrite=true"):
        train_rsna.main(argv)
    (run / "stale.txt").write_text("from the old run")
    run_main([*argv, "overwrite=true"])
    assert not (run / "stale.txt").exists() and list(pd.read_csv(run / "metrics.csv")["step"]) == [1]
    rec = torch.load(run / "last.ckpt", weights_only=True)["record"]
    assert rec["params"]["input_params"]["jpegs"]["quality"] == 90
    assert provenance.digest(provenance.read_record(run)) == provenance.digest(rec) != provenance.digest(first)
