"""The shared workspace of the stage tests: a tiny generated data set taken through stages 1-6.

Ids are 12-hex-character strings, as in the competition files. Two CNN + LSTM pairs, fold 0:
the CNN trained for a few steps on 32 px JPEGs, ``rexnet200_bce`` at input 32 px (= the JPEG size) and ``rexnet200_focal`` at 24 px (smaller). ``STAGES`` holds
each stage's arguments there: a rerun with the same ones must write nothing.
"""
import os
import subprocess
import sys

import dump_embeddings
import export_models
import inference
import make_csv
import make_image
import make_npz
import train_rsna
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.paths import REPO_ROOT
from rsna_pe.synthetic import generate

DEMO = CONFIG_DIR / "demo"
SRC = REPO_ROOT / "src"
SIZE = 32   # JPEG size, and the bce CNN's input
SMALL = 24  # the focal CNN's input: smaller than its JPEGs
RUNS = ("rexnet200_bce", "rexnet200_focal")
ONE_PAIR = ["models=[{cnn: rexnet200_bce, rnn: rexnet200_bce}]", "folds=[0]"]  # stage 7 on one pair
CNN_FAST = [f"jpeg_size={SIZE}", "train.max_steps_per_epoch=2", "train.batch_size=8",
            "train.val_batch_size=64", "train.num_workers=0", "wandb.mode=disabled"]
RNN_FAST = [f"jpeg_size={SIZE}", "train.epochs=2", "train.num_workers=0", "wandb.mode=disabled"]
DUMP_ARGS = [f"jpeg_size={SIZE}", "num_workers=0", "batch_size=4"]

STAGES = [
    (make_image, ["-c", str(DEMO / "make_image.yml"), f"jpeg_size={SIZE}", "workers=1"]),
    (make_csv, ["-c", str(DEMO / "make_csv.yml"), f"jpeg_size={SIZE}"]),
    *[(train_rsna, ["-c", str(DEMO / "train_cnn" / f"{run}.yml"), *CNN_FAST, f"dataset.size={size}"])
      for run, size in zip(RUNS, (SIZE, SMALL))],
    (make_npz, ["-c", str(DEMO / "make_npz.yml"), f"jpeg_size={SIZE}", "workers=1"]),
    *[(dump_embeddings, ["-c", str(DEMO / "dump_embeddings" / f"{run}.yml"), *DUMP_ARGS]) for run in RUNS],
    *[(train_rsna, ["-c", str(DEMO / "train_rnn" / f"{run}.yml"), *RNN_FAST]) for run in RUNS],
]
# Subprocesses: one OpenMP thread each (spinning threads on a busy 2-core machine make every
# step many times slower; one thread also makes CPU results repeatable) and no wandb.
SUB_ENV = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", PYTHONPATH=str(SRC))


def build(root):
    """Stages 1-6 in ``root`` (the current folder)."""
    # Ids as the competition writes them (12 hex characters), so every stage meets them.
    generate(root / "data", n_train=24, n_test=3, slices=(4, 6), matrix=64, workers=1, seed=3, hex_ids=True)
    for stage, argv in STAGES:
        stage.main(argv)


def infer(*extra):
    """Stage 7 with the bce pair of fold 0."""
    return inference.main(["-c", str(DEMO / "inference.yml"), "models=[{cnn: rexnet200_bce, rnn: rexnet200_bce}]",
                           "folds=[0]", "num_workers=0", *extra])


def export_bundle(ws, out, pairs):
    """export_models.py from the trained workspace ``ws`` (run folders are found from there) of
    the pairs ``pairs`` (overrides) into ``out``; -> ``out``."""
    cwd = os.getcwd()
    os.chdir(ws)
    try:
        export_models.main(["-c", str(DEMO / "inference.yml"), "--out", str(out), *pairs])
    finally:
        os.chdir(cwd)
    return out


def snapshot(root):
    """(path, mtime_ns, size) of every file under ``root``: equal before and after = nothing written."""
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size)
                  for p in root.rglob("*") if p.is_file())


def run_script(script, *args, env=None, nproc=1, timeout=300):
    """``src/<script>`` in a subprocess (under torchrun with ``nproc`` > 1), in the current folder."""
    launch = [sys.executable] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return subprocess.run([*launch, str(SRC / script), *map(str, args)], env={**SUB_ENV, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
