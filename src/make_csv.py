"""Stage 2: train.csv + slice order + the original's 15-way study split -> the fold csv.

    python src/make_csv.py [-c configs/make_csv.yml] [key=value ...]

Writes ``<data_dir>/fold/ver1/train-jpegs-<jpeg_size>/train.csv``: train.csv plus ``z_pos_order``
and ``fold`` (0..14). Slice order comes from each converted series' own manifest. Every series
of train.csv must be finished in the JPEG set or logged as failed by stage 1 (in errors.csv or
any shard's errors.shard-K-of-N.csv), else this stops naming the missing ones. Folds are
assigned on every study; failed series are dropped afterwards with a warning; a series with
finished JPEGs is never dropped, whatever an old log says. The dropped series are part of the
record, so after stage 1 converts one of them a rerun asks for overwrite=true. A series whose
ids are not safe file names (rsna_pe.core.ids) is never looked up on disk: stage 1 logged it.
"""
import logging
from pathlib import Path

import pandas as pd

from rsna_pe.core import cli, paths
from rsna_pe.core.config import save_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import atomic_to_csv, read_csv
from rsna_pe.core.labels import ID_COLUMNS, TRAIN_COLUMNS
from rsna_pe.data.folds import assign_folds
from rsna_pe.data.images import finished_rows
from rsna_pe.records import provenance, shards

log = logging.getLogger("make_csv")
IDS = dict.fromkeys(ID_COLUMNS, str)
KEY = ["StudyInstanceUID", "SeriesInstanceUID"]


def logged_failures(jpegs):
    """(study, series) of every failure stage 1 logged, in any shard's log."""
    frames = [read_csv(p, KEY, id_columns=KEY, dtype=IDS) for p in shards.all_logs(jpegs, "errors")]
    return {tuple(k) for f in frames for k in f[KEY].values}


def slice_order(df, jpegs, digest):
    """Manifest rows of the finished series and the failed series to drop; stops when a
    series is neither finished nor logged as failed."""
    keys = sorted(set(map(tuple, df[KEY].values)))
    rows, missing = finished_rows(jpegs, keys, digest)
    failed = logged_failures(jpegs) if missing else set()
    unexplained = [k for k in missing if k not in failed]
    if unexplained:
        first = ", ".join("/".join(k) for k in unexplained[:3])
        raise PipelineError(f"{len(unexplained)} series of train.csv have neither finished JPEGs nor a "
                            f"logged failure in {jpegs} (first: {first}); run stage 1 (make_image.py) "
                            "for every shard")
    return rows, missing


def main(argv=None):
    cfg, args = cli.parse(__doc__.splitlines()[0], default="make_csv.yml", argv=argv,
                          add_args=lambda p: p.add_argument(
                              "--print-output", action="store_true",
                              help="print the fold csv's path for this config and exit"))
    data = Path(cfg["data_dir"])
    if args.print_output:  # lets scripts find the fold csv without spelling its path
        print(paths.fold_csv(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"]))
        return 0
    jpegs, out = paths.jpeg_dir(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"]), \
        paths.fold_csv(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"])
    jpeg_ref = provenance.ref(jpegs, out.parent)
    df = read_csv(data / "train.csv", TRAIN_COLUMNS, id_columns=ID_COLUMNS, dtype=IDS)
    manifest, dropped = slice_order(df, jpegs, jpeg_ref["digest"])
    record = provenance.make("make_csv", {"n_splits": cfg["n_splits"], "seed": cfg["seed"],
                                          "dropped": ["/".join(k) for k in dropped]},
                             {"jpegs": jpeg_ref})
    if provenance.guard(out.parent, record, out.is_file(), cfg["overwrite"], "fold csv") and out.is_file():
        log.info("%s is up to date", out)
        return 0

    folds = assign_folds(df, cfg["n_splits"], cfg["seed"])
    df["fold"] = df["StudyInstanceUID"].map(folds)
    if dropped:
        bad = pd.MultiIndex.from_frame(df[KEY]).isin(dropped)
        log.warning("dropping %d series (%d images) that stage 1 could not convert (see %s)",
                    len(dropped), int(bad.sum()), ", ".join(p.name for p in shards.all_logs(jpegs, "errors")))
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
