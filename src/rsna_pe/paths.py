"""Where every artifact lives, derived from roots in the configs, run name and fold."""
from pathlib import Path


def jpeg_dir(data_dir, size, split="train"):
    return Path(data_dir) / f"{split}-jpegs-{size}"


def fold_csv(data_dir, size):
    return Path(data_dir) / "fold" / "ver1" / f"train-jpegs-{size}" / "train.csv"


def npz_dir(data_dir, size):
    return Path(data_dir) / "npz" / f"train-jpegs-{size}"


def run_dir(output_root, run_name, fold):
    """``output/<stage>/<run_name>/fold_<k>``: config.yaml, checkpoints, metrics."""
    return Path(output_root) / run_name / f"fold_{fold}"


def dump_dir(dump_root, model, fold):
    """``dump/v1/<cnn run_name>/fold_<k>``: one npz of embeddings per series."""
    return Path(dump_root) / model / f"fold_{fold}"


def series_file(root, study, series, ext=".npz"):
    return Path(root) / study / f"{series}{ext}"
