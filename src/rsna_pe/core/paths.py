"""Where every artifact lives, derived from roots in the configs, run name and fold."""
from pathlib import Path

from .errors import ConfigError
from .ids import checked, series_name

# The checkout's root (configs/, src/): the one place it is computed.
REPO_ROOT = Path(__file__).resolve().parents[3]

# The experiment key jpeg_crop -> what it adds to the name of the JPEG set and of every folder
# derived from it (fold csv, npz set), so that cropped and whole-slice sets live side by side.
CROP_SUFFIX = {"none": "", "lung": "-lungcrop"}


def crop_of(cfg):
    """A config's ``jpeg_crop`` (experiment.yml); one saved before the key existed: none."""
    return cfg.get("jpeg_crop", "none")


def jpeg_set(size, crop="none"):
    """``jpegs-<size>[-lungcrop]``: the name stage 1's set and its derived folders share."""
    if crop not in CROP_SUFFIX:
        raise ConfigError(f"jpeg_crop={crop}: expected one of {', '.join(CROP_SUFFIX)}")
    return f"jpegs-{size}{CROP_SUFFIX[crop]}"


def jpeg_dir(data_dir, size, *, split="train", crop="none"):
    return Path(data_dir) / f"{split}-{jpeg_set(size, crop)}"


def fold_csv(data_dir, size, *, crop="none"):
    return Path(data_dir) / "fold" / "ver1" / f"train-{jpeg_set(size, crop)}" / "train.csv"


def npz_dir(data_dir, size, *, crop="none"):
    return Path(data_dir) / "npz" / f"train-{jpeg_set(size, crop)}"


# A head run's label prior (training means of the 10 labels): stage 6 writes it, inference and
# bundles read it.
PRIOR_FILE = "prior.json"


def run_dir(output_root, run_name, fold):
    """``output/<stage>/<run_name>/fold_<k>``: config.yaml, checkpoints, metrics."""
    return Path(output_root) / run_name / f"fold_{fold}"


def dump_dir(dump_root, model, fold):
    """``dump/v1/<cnn run_name>/fold_<k>``: one npz of embeddings per series."""
    return Path(dump_root) / model / f"fold_{fold}"


def series_dir(root, study, series):
    """``<root>/<study>/<series>``: a series' folder (DICOM, JPEGs). Both ids must be safe
    names (rsna_pe.core.ids), else a one-line error naming the series: no id reaches a path
    unchecked, so none can point outside ``root``."""
    where = series_name(study, series)
    return Path(root) / checked(study, "StudyInstanceUID", where) / checked(series, "SeriesInstanceUID", where)


def series_file(root, study, series, ext=".npz"):
    """``<root>/<study>/<series><ext>``: a series' npz (stages 4, 5); ids checked (rsna_pe.core.ids)."""
    folder = series_dir(root, study, series)
    return folder.with_name(folder.name + ext)
