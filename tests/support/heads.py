"""Stage 6 helpers: a dump of tiny embeddings with its fold csv and records, the head's config
for it, and the ids its out-of-fold file must hold."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from rsna_pe.core import paths
from rsna_pe.core.io import atomic_savez
from rsna_pe.core.labels import EXAM_LABELS, LABELS
from rsna_pe.records import provenance

DIM = 8  # tiny embeddings: the head takes input_dim from the config


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # Tiny models: OpenMP threads cost more than they give, and a busy machine makes spinning
    # threads many times slower. OMP_NUM_THREADS also stops the engine from raising the count.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


JPEG_SIZE = 8  # names the fold csv's folder only


def make_dump(root, folds=(0, 2, 6, 9, 12, 14), lengths=(4, 6, 3, 5, 7, 2), cnn_run="cnn_a", fold=0):
    """Fold csv + dumped npz of one CNN run/fold: one series per study; series i positive if odd."""
    rng = np.random.default_rng(0)
    rows, dump = [], paths.dump_dir(root / "dump", cnn_run, fold)
    for i, (f, n) in enumerate(zip(folds, lengths)):
        study, series = f"1.2.{i}", f"1.3.{i}"
        labels = np.zeros((n, len(LABELS)), np.float32)
        if i % 2:
            labels[:, LABELS.index("central_pe")] = 1
            labels[:, LABELS.index("rv_lv_ratio_lt_1")] = 1
            labels[: n // 2 + 1, -1] = 1
        else:
            labels[:, LABELS.index("negative_exam_for_pe")] = 1
        sop = np.array([f"1.4.{i}.{k}" for k in range(n)])
        atomic_savez(paths.series_file(dump, study, series),
                     embeddings=rng.normal(size=(n, DIM)).astype(np.float32), labels=labels, sop=sop)
        for k in range(n):
            rows.append({"StudyInstanceUID": study, "SeriesInstanceUID": series,
                         "SOPInstanceUID": sop[k], "z_pos_order": k, **dict(zip(LABELS, labels[k])),
                         "fold": f})
    csv = paths.fold_csv(root / "data", JPEG_SIZE)
    csv.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(csv, index=False)
    write_records(csv.parent, dump)
    return csv


def write_records(fold_dir, dump, labels=LABELS, checkpoint="c" * 64):
    """The records stages 2 and 5 keep beside their outputs (a training run refers to them)."""
    provenance.write(fold_dir, provenance.make("make_csv", {"n_splits": 15, "seed": 42}))
    provenance.write(dump, provenance.make("dump_embeddings", {
        "checkpoint_sha256": checkpoint, "input_size": 8, "labels": list(labels)}))


def task_cfg(root, csv, cnn_run="cnn_a", fold=0):
    return {"network": "rnn", "jpeg_size": JPEG_SIZE,
            "dataset": {"data_dir": str(root / "data"), "dump_root": str(root / "dump"),
                                          "cnn_run": cnn_run, "fold": fold, "k_fold": 3},
            "model": {"input_dim": DIM, "hidden": 6, "layers": 3, "dropout": 0.5}}


def expected_oof_ids(csv, fold=0):
    """Every validation SOP plus nine exam rows per validation study, from the fold csv."""
    df = pd.read_csv(csv, dtype=str)
    val = df[df["fold"].astype(int).between(5 * fold, 5 * fold + 4)]
    return sorted(list(val["SOPInstanceUID"]) +
                  [f"{s}_{k}" for s in val["StudyInstanceUID"].unique() for k in EXAM_LABELS])


REPO = Path(__file__).resolve().parents[2]


def tiny_overrides(root, csv):
    """Overrides turning the real stage-6 config into a seconds-long CPU run on make_dump()."""
    return [f"dataset.data_dir={root / 'data'}", f"jpeg_size={JPEG_SIZE}", f"dataset.dump_root={root / 'dump'}", "dataset.cnn_run=cnn_a",
            f"model.input_dim={DIM}", "model.hidden=6", "train.epochs=2", "train.batch_size=2",
            "train.val_batch_size=2", "train.num_workers=0", "train.device=cpu",
            f"output_dir={root / 'out'}", "wandb.mode=disabled"]
