"""Shared set-up for the stage 5 and 7 benchmarks: run folders with randomly initialised
CNN and LSTM checkpoints in the pipeline's own format (no training, no downloads)."""
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rsna_pe.core import paths
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.labels import LABELS
from rsna_pe.data.images import conversion_params
from rsna_pe.models.networks import build_network, output_labels
from rsna_pe.records import provenance
from rsna_pe.train.run_records import decisive_config


def add_model_args(p):
    """The options the stage 5 and 7 benchmarks share: how the CNN runs and what reads ahead."""
    p.add_argument("--chunk", type=int, default=128, help="slices per CNN forward")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers reading ahead")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile (warm-up apart); else the configs' compile: auto, off at this size")
    p.add_argument("--ceiling-steps", type=int, default=10, help="timed batches of the plain forward")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn, device, steps, warmup):
    """(warm-up seconds, seconds of ``steps`` timed calls) of ``fn``, synchronised on ``device``."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    t1 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return t1 - t0, time.perf_counter() - t1


def fake_runs(out, size, variants=("rexnet200_bce", "rexnet200_focal"), folds=(0, 1, 2), rnn=True):
    """Write best.ckpt (random weights) for each CNN run (and LSTM run) x fold under ``out``,
    with the records later stages check (JPEG settings, dumped checkpoint, label order).
    Returns (cnn_output, rnn_output)."""
    cnn_out, rnn_out = Path(out) / "train_cnn", Path(out) / "train_rnn"
    for v in variants:
        for k in folds:
            torch.manual_seed(k)
            cfg = load_config(CONFIG_DIR / "train_cnn" / f"{v}.yml", [
                f"dataset.fold={k}", f"jpeg_size={size}", f"dataset.size={size}", "model.pretrained=false"])
            cnn = _save(build_network(cfg), cfg, paths.run_dir(cnn_out, v, k), jpegs=conversion_params(size, 95))
            if rnn:
                rcfg = load_config(CONFIG_DIR / "train_rnn" / f"{v}.yml", [f"dataset.fold={k}"])
                run = paths.run_dir(rnn_out, v, k)
                _save(build_network(rcfg), rcfg, run, dump={"checkpoint_sha256": provenance.file_sha256(cnn)})
                (run / "prior.json").write_text(json.dumps({name: 0.1 for name in LABELS}))
    return cnn_out, rnn_out


def _save(model, cfg, run, **input_params):
    run.mkdir(parents=True, exist_ok=True)
    record = provenance.make(f"train_{cfg['network']}", {
        "config": decisive_config(cfg), "labels": output_labels(cfg), "input_params": input_params})
    torch.save({"config": cfg, "record": record, "model": model.state_dict()}, run / "best.ckpt")
    return run / "best.ckpt"


def fake_pairs(out, size, n_pairs=6):
    """[(cnn best.ckpt, rnn best.ckpt)] of the first ``n_pairs`` of the six (variant x fold)."""
    combos = [(v, k) for v in ("rexnet200_bce", "rexnet200_focal") for k in (0, 1, 2)][:n_pairs]
    pairs = []
    for v, k in combos:
        cnn_out, rnn_out = fake_runs(out, size, variants=(v,), folds=(k,))
        pairs.append((paths.run_dir(cnn_out, v, k) / "best.ckpt", paths.run_dir(rnn_out, v, k) / "best.ckpt"))
    return pairs


def fake_test_set(root, n_studies, slices, size):
    """Synthetic test DICOM studies of ``slices`` slices each (uncompressed, ``size`` matrix):
    (studies sorted, {study: series folder}, {study: [SOP ids]})."""
    import pandas as pd

    from rsna_pe.infer.ensemble import series_dirs
    from rsna_pe.synthetic import generate

    generate(Path(root), n_train=0, n_test=n_studies, slices=(slices, slices), matrix=size,
             compressed_fraction=0.0, odd_matrix_fraction=0.0)
    test = pd.read_csv(Path(root) / "test.csv", dtype=str)
    dirs = series_dirs(Path(root) / "test", test)
    expected = test.groupby("StudyInstanceUID")["SOPInstanceUID"].apply(list).to_dict()
    return sorted(dirs), dirs, expected
