"""Stage 2: train.csv + slice order + the original's 15-way study split -> the fold csv.

    python src/make_csv.py [-c configs/make_csv.yml] [key=value ...]

Writes ``<data_dir>/fold/ver1/train-jpegs-<jpeg_size>/train.csv``: train.csv plus ``z_pos_order``
and ``fold`` (0..14). Folds are assigned on every study; series that stage 1 logged as failed
are dropped afterwards with a warning.
"""
import logging
from pathlib import Path

from rsna_pe import cli, paths, provenance
from rsna_pe.config import save_config
from rsna_pe.errors import PipelineError
from rsna_pe.folds import assign_folds
from rsna_pe.io import atomic_to_csv, read_csv
from rsna_pe.labels import ID_COLUMNS, TRAIN_COLUMNS

log = logging.getLogger("make_csv")
IDS = dict.fromkeys(ID_COLUMNS, str)


def main(argv=None):
    cfg, args = cli.parse(__doc__.splitlines()[0], default="make_csv.yml", argv=argv,
                          add_args=lambda p: p.add_argument(
                              "--print-output", action="store_true",
                              help="print the fold csv's path for this config and exit"))
    data = Path(cfg["data_dir"])
    if args.print_output:  # lets scripts find the fold csv without spelling its path
        print(paths.fold_csv(data, cfg["jpeg_size"]))
        return 0
    jpegs = paths.jpeg_dir(data, cfg["jpeg_size"])
    out = paths.fold_csv(data, cfg["jpeg_size"])
    record = provenance.make("make_csv", {"n_splits": cfg["n_splits"], "seed": cfg["seed"]},
                             {"jpegs": provenance.ref(jpegs, out.parent)})
    if provenance.guard(out.parent, record, out.is_file(), cfg["overwrite"], "fold csv") and out.is_file():
        log.info("%s is up to date", out)
        return 0
    df = read_csv(data / "train.csv", TRAIN_COLUMNS, dtype=IDS)
    manifest = read_csv(jpegs / "manifest.csv", list(ID_COLUMNS) + ["z_pos_order"], dtype=IDS)

    folds = assign_folds(df, cfg["n_splits"], cfg["seed"])
    df["fold"] = df["StudyInstanceUID"].map(folds)

    errors_csv = jpegs / "errors.csv"
    failed = read_csv(errors_csv, dtype=IDS) if errors_csv.is_file() else None
    if failed is not None and len(failed):
        bad = df["SeriesInstanceUID"].isin(failed["SeriesInstanceUID"])
        log.warning("dropping %d series (%d images) that stage 1 could not convert (see %s)",
                    failed["SeriesInstanceUID"].nunique(), int(bad.sum()), errors_csv)
        df = df[~bad]

    df = df.merge(manifest[list(ID_COLUMNS) + ["z_pos_order"]], on=list(ID_COLUMNS), how="left")
    missing = df["z_pos_order"].isna()
    if missing.any():
        first = df.loc[missing, "SOPInstanceUID"].head(3).tolist()
        raise PipelineError(f"{int(missing.sum())} train.csv rows have no JPEG in {jpegs} "
                            f"(first: {', '.join(first)}); rerun stage 1 (make_image.py)")
    df["z_pos_order"] = df["z_pos_order"].astype(int)
    df = df.sort_values(["StudyInstanceUID", "SeriesInstanceUID", "z_pos_order"])

    atomic_to_csv(df, out)
    save_config(cfg, out.parent / "make_csv.yaml")
    log.info("%d images, %d studies -> %s", len(df), df["StudyInstanceUID"].nunique(), out)


if __name__ == "__main__":
    cli.run(main)
