"""Stage 1/2 outputs for the CNN tests, and a quick training run's arguments.

JPEGs + fold csv (and their records) of 15 studies x 2 slices, one study per fold id 0..14;
everything at 32 px, a handful of steps, no augmentation, no pretrained weights.
"""
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

import train_rsna
from rsna_pe.core import paths
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.labels import TRAIN_COLUMNS
from rsna_pe.data.images import conversion_params
from rsna_pe.records import provenance

SIZE = 32
N_STUDIES, N_SLICES = 15, 2  # 15 studies: every fold id 0..14 exists once
DEMO_CFG = CONFIG_DIR / "demo" / "train_cnn" / "rexnet200_bce.yml"


def write_records(root, size=SIZE, quality=95):
    """The records stages 1 and 2 keep beside their outputs (a training run refers to them)."""
    jpegs, fold_dir = paths.jpeg_dir(root, size), paths.fold_csv(root, size).parent
    provenance.write(jpegs, provenance.make("make_image", {"split": "train", **conversion_params(size, quality)}))
    provenance.write(fold_dir, provenance.make("make_csv", {"n_splits": 15, "seed": 42},
                                               {"jpegs": provenance.ref(jpegs, fold_dir)}))


def write_data(root, size=SIZE, n_studies=N_STUDIES, n_slices=N_SLICES):
    """JPEGs + fold csv (and their records) in the stage 1/2 layout; a bright square marks a PE
    slice."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(n_studies):
        study, series = f"1.2.826.{s}", f"1.2.827.{s}"
        folder = paths.jpeg_dir(root, size) / study / series
        folder.mkdir(parents=True)
        for z in range(n_slices):
            pe = (s + z) % 2
            img = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
            if pe:
                img[size // 4: size // 2, size // 4: size // 2] = 230
            sop = f"1.2.828.{s}.{z}"
            cv2.imwrite(str(folder / f"{z:04d}_{sop}.jpg"), img)
            row = dict.fromkeys(TRAIN_COLUMNS, 0)
            row.update(StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID=sop,
                       pe_present_on_image=pe, z_pos_order=z, fold=s)
            rows.append(row)
    csv = paths.fold_csv(root, size)
    csv.parent.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(csv, index=False)
    write_records(root, size)
    return Path(root)


def overrides(data, out, **extra):
    o = {"dataset.data_dir": data, "jpeg_size": SIZE, "dataset.size": SIZE,
         "output_dir": out, "train.batch_size": 4, "train.val_batch_size": 16,
         "train.num_workers": 0, "train.epochs": 2, "train.max_steps_per_epoch": 2,
         "train.val_per_epoch": 2, "train.device": "cpu", "augment.enabled": False,
         "wandb.mode": "disabled"}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def run_main(argv):
    assert train_rsna.main(argv) == 0
