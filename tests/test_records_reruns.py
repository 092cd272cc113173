"""Reruns of stages 5-7 on the shared workspace: records, stale outputs, label order, explicit
pairs, a kill at any write, and the same results under torchrun with two CPU processes."""
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import dump_embeddings
import inference
import train_rsna
from rsna_pe.core import labels, paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import CRASH_ENV, CRASH_EXIT_CODE
from rsna_pe.core.labels import LABELS
from rsna_pe.data.images import read_npz_images
from rsna_pe.records import provenance
from rsna_pe.train.checkpoint import find_checkpoint, load_trained
from support.workspace import DEMO, DUMP_ARGS, RNN_FAST, SIZE, STAGES, infer, run_script, snapshot

DUMP_BCE = ["-c", str(DEMO / "dump_embeddings" / "rexnet200_bce.yml"), *DUMP_ARGS]
RNN_BCE = ["-c", str(DEMO / "train_rnn" / "rexnet200_bce.yml"), *RNN_FAST]
INFER_ARGS = ["-c", str(DEMO / "inference.yml"), "models=[{cnn: rexnet200_bce, rnn: rexnet200_bce}]",
              "folds=[0]", "num_workers=0", "device=cpu"]


def _ckpt(stage, run="rexnet200_bce"):
    return find_checkpoint(f"output/train_{stage}", run, 0)


def _npz_files(root):
    return sorted(p.relative_to(root) for p in Path(root).rglob("*.npz"))


# ----------------------------------------------------------------------------- records
def test_unchanged_rerun_of_every_stage_writes_nothing(ws):
    infer()  # the submission, unless an earlier test made it
    before = snapshot(ws)
    for stage, argv in STAGES:
        assert not stage.main(argv)
    assert not infer()
    assert snapshot(ws) == before


def test_checkpoints_dumps_and_submissions_record_what_made_them(ws):
    cnn = torch.load(_ckpt("cnn"), weights_only=True)["record"]
    assert cnn["params"]["labels"] == ["pe_present_on_image"] and set(cnn["inputs"]) == {"jpegs", "fold_csv"}
    assert cnn["params"]["input_params"]["jpegs"]["quality"] == 95
    assert {"torch", "timm", "pydicom", "numpy"} <= set(cnn["info"]["packages"]) and "git" in cnn["info"]
    assert provenance.digest(provenance.read_record(_ckpt("cnn").parent)) == provenance.digest(cnn)
    head = torch.load(_ckpt("rnn"), weights_only=True)["record"]
    assert head["params"]["labels"] == list(LABELS) and set(head["inputs"]) == {"dump", "fold_csv"}
    dump = provenance.read_record(paths.dump_dir("dump/v1", "rexnet200_bce", 0))
    assert dump["params"] == {"checkpoint_sha256": provenance.file_sha256(_ckpt("cnn")),
                              "input_size": SIZE, "labels": list(LABELS)}
    assert head["params"]["input_params"]["dump"] == dump["params"]
    infer()
    sub = provenance.read_record("output/inference/rexnet200")
    assert sub["params"]["pairs"] == [{"cnn": provenance.file_sha256(_ckpt("cnn")),
                                       "rnn": provenance.file_sha256(_ckpt("rnn"))}]


def test_replaced_checkpoint_stops_later_stages_until_overwrite(ws, tmp_path, monkeypatch):
    """best.ckpt replaced after its dump: the dump, the head and inference each stop with a
    one-line error instead of keeping the old embeddings; overwrite=true redoes them."""
    for sub in ("data/npz", "data/fold", "data/test", "output/train_cnn/rexnet200_bce",
                "output/train_rnn/rexnet200_bce", "dump/v1/rexnet200_bce"):
        shutil.copytree(ws / sub, tmp_path / sub)
    shutil.copy(ws / "data" / "test.csv", tmp_path / "data" / "test.csv")
    monkeypatch.chdir(tmp_path)
    run = _ckpt("cnn").parent
    best_step = torch.load(run / "best.ckpt", weights_only=True)["step"]
    other = next(p for p in sorted(run.glob("epoch*.ckpt")) if torch.load(p, weights_only=True)["step"] != best_step)
    shutil.copy(other, run / "best.ckpt")
    with pytest.raises(PipelineError, match=r"dump.*checkpoint_sha256: .* -> .*overwrite=true"):
        dump_embeddings.main(DUMP_BCE)
    with pytest.raises(PipelineError, match="another checkpoint than .*best.ckpt"):
        infer()
    dump_embeddings.main([*DUMP_BCE, "overwrite=true"])
    out = paths.dump_dir("dump/v1", "rexnet200_bce", 0)
    first = out / _npz_files(out)[0]
    model, _ = load_trained(run / "best.ckpt")
    with np.load(first) as z, np.load(paths.npz_dir("data", SIZE) / first.relative_to(out)) as src, \
            torch.inference_mode():
        np.testing.assert_allclose(z["embeddings"], model.features(torch.from_numpy(read_npz_images(src, "npz"))),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(PipelineError, match=r"training run .*input_params\.dump\.checkpoint_sha256: .* -> .*overwrite=true"):
        train_rsna.main(RNN_BCE)
    assert train_rsna.main([*RNN_BCE, "overwrite=true"]) == 0
    assert not infer()  # a consistent pair again


def test_submission_is_redone_only_with_overwrite_and_never_left_when_invalid(ws, tmp_path, monkeypatch):
    out = tmp_path / "sub"
    infer(f"output_dir={out}")
    first = (out / "submission.csv").read_bytes()
    with pytest.raises(PipelineError, match=r"tta_flip: false -> true.*overwrite=true"):
        infer(f"output_dir={out}", "tta_flip=true")
    assert (out / "submission.csv").read_bytes() == first
    infer(f"output_dir={out}", "tta_flip=true", "overwrite=true")
    assert (out / "submission.prev.csv").read_bytes() == first
    assert (out / "submission.csv").read_bytes() != first
    monkeypatch.setattr(inference, "validate_submission", lambda *a: ["1 id missing: 1.2.3"])
    with pytest.raises(PipelineError, match=r"failed validation.*1\.2\.3; no .*submission.csv written "
                                            r"\(the previous one is .*submission.prev.csv\)"):
        infer(f"output_dir={out}", "overwrite=true")
    assert not (out / "submission.csv").exists()


def test_explicit_pairs_must_agree_on_cnn_run_and_fold(ws, tmp_path):
    def pair(cnn, rnn):
        return f"checkpoints=[{{cnn: {cnn}, rnn: {rnn}}}]"
    with pytest.raises(PipelineError, match="CNN run 'rexnet200_focal', paired with CNN run 'rexnet200_bce'"):
        infer(pair(_ckpt("cnn"), _ckpt("rnn", "rexnet200_focal")), f"output_dir={tmp_path}")
    ckpt = torch.load(_ckpt("rnn"), weights_only=True)
    ckpt["config"]["dataset"]["fold"] = 1
    torch.save(ckpt, tmp_path / "fold1.ckpt")
    with pytest.raises(PipelineError, match="LSTM head of fold 1 paired with a CNN of fold 0"):
        infer(pair(_ckpt("cnn"), tmp_path / "fold1.ckpt"), f"output_dir={tmp_path}")
    assert not list(tmp_path.glob("*.csv")) and not (tmp_path / "record.json").exists()


# ----------------------------------------------------------------------------- label order
def _swap(monkeypatch, a, b):
    """This code's label order with ``a`` and ``b`` swapped, as every reader sees it."""
    order = [b if x == a else a if x == b else x for x in LABELS]
    monkeypatch.setattr(labels, "LABELS", tuple(order))
    monkeypatch.setattr(labels, "EXAM_LABELS", tuple(order[:-1]))
    monkeypatch.setattr(labels, "IMAGE_LABEL", order[-1])


def test_outputs_of_another_label_order_are_refused(ws, tmp_path, monkeypatch):
    _swap(monkeypatch, "central_pe", "leftsided_pe")
    load_trained(_ckpt("cnn"))  # its one output is still pe_present_on_image
    with pytest.raises(PipelineError, match="another label order .*'central_pe' at position 4 where this "
                                            "code has 'leftsided_pe'.*retrain"):
        load_trained(_ckpt("rnn"))
    with pytest.raises(PipelineError, match=r"fold_0/record.json: made with another label order"):
        train_rsna.main([*RNN_BCE, f"output_dir={tmp_path}"])  # reads the dump's labels
    _swap(monkeypatch, "pe_present_on_image", "negative_exam_for_pe")
    with pytest.raises(PipelineError, match="another label order"):
        load_trained(_ckpt("cnn"))


def test_checkpoint_without_label_order_is_refused(ws, tmp_path):
    ckpt = torch.load(_ckpt("cnn"), weights_only=True)
    del ckpt["record"]
    torch.save(ckpt, tmp_path / "old.ckpt")
    with pytest.raises(PipelineError, match=r"old.ckpt: no recorded label order .*retrain it"):
        load_trained(tmp_path / "old.ckpt")


# ----------------------------------------------------------------------------- kills, torchrun
def test_dump_killed_at_any_write_resumes_to_identical_files(ws):
    """Killed at its first write (the record), mid-way and at the last npz, then rerun: the
    same bytes as an uninterrupted run and no temporaries."""
    argv = [*DUMP_BCE, "device=cpu"]
    r = run_script("dump_embeddings.py", *argv, "dump_root=dump/ref")
    assert r.returncode == 0, r.stderr[-3000:]
    ref, out = paths.dump_dir("dump/ref", "rexnet200_bce", 0), paths.dump_dir("dump/crash", "rexnet200_bce", 0)
    n = len(_npz_files(ref))
    for at in (1, 2 + n // 2, None):  # record, config, then npz files: write 2 + n // 2 is mid-way
        at = at or n - len(_npz_files(out))  # the last file still missing
        r = run_script("dump_embeddings.py", *argv, "dump_root=dump/crash", env={CRASH_ENV: str(at)})
        assert r.returncode == CRASH_EXIT_CODE, r.stderr[-3000:]
    assert len(_npz_files(out)) == n - 1 and list(out.rglob("*.tmp"))
    r = run_script("dump_embeddings.py", *argv, "dump_root=dump/crash")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _npz_files(out) == _npz_files(ref) and not list(out.rglob("*.tmp"))
    assert all((out / f).read_bytes() == (ref / f).read_bytes() for f in _npz_files(ref))


def test_dump_under_torchrun_equals_one_process(ws):
    r = run_script("dump_embeddings.py", *DUMP_BCE, "device=cpu", "dump_root=dump/ddp", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = paths.dump_dir("dump/v1", "rexnet200_bce", 0), paths.dump_dir("dump/ddp", "rexnet200_bce", 0)
    assert _npz_files(two) == _npz_files(one)
    for f in _npz_files(one):
        with np.load(one / f) as a, np.load(two / f) as b:
            np.testing.assert_allclose(b["embeddings"], a["embeddings"], rtol=1e-4, atol=1e-5)
            assert np.array_equal(a["labels"], b["labels"]) and np.array_equal(a["sop"], b["sop"])


def test_inference_under_torchrun_equals_one_process(ws):
    infer()
    r = run_script("inference.py", *INFER_ARGS, "output_dir=output/inference/ddp", nproc=2)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (pd.read_csv(f"output/inference/{d}/submission.csv", dtype={"id": str}).set_index("id")["label"]
                for d in ("rexnet200", "ddp"))
    assert sorted(one.index) == sorted(two.index)
    np.testing.assert_allclose(two[one.index], one, rtol=1e-5, atol=1e-6)
