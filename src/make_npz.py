"""Stage 4: pack each series' JPEGs (z order) and labels into one npz.

    python src/make_npz.py [-c configs/make_npz.yml] [key=value ...]

Writes ``<data_dir>/npz/train-jpegs-<jpeg_size>/<study>/<series>.npz`` with the series' JPEG
files as they are (``jpeg``, ``jpeg_offsets``, ``format``; see rsna_pe.images), ``labels``
float32 (S, 10) in LABELS order and ``sop`` (S,). Existing files
are skipped; a series with a missing or corrupt JPEG is logged to ``errors.csv`` and the
command exits non-zero after packing every other series.
"""
import functools
import logging
from pathlib import Path

import numpy as np

from rsna_pe import cli, paths, provenance
from rsna_pe.config import save_config
from rsna_pe.images import NPZ_FORMAT, jpeg_name, pack_jpeg_files
from rsna_pe.io import atomic_savez, read_csv
from rsna_pe.labels import ID_COLUMNS, LABELS
from rsna_pe.parallel import run_series

log = logging.getLogger("make_npz")


def pack_series(group, jpeg_root, out_root, compress):
    """Rows of one series (sorted by z_pos_order) -> its npz."""
    study, series = group["StudyInstanceUID"].iloc[0], group["SeriesInstanceUID"].iloc[0]
    folder = jpeg_root / study / series
    files = [folder / jpeg_name(z, sop) for z, sop in zip(group["z_pos_order"], group["SOPInstanceUID"])]
    atomic_savez(paths.series_file(out_root, study, series), compress=compress,
                 **pack_jpeg_files(files),
                 labels=group[list(LABELS)].to_numpy(np.float32),
                 sop=group["SOPInstanceUID"].to_numpy(str))
    return len(files)


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="make_npz.yml", argv=argv)
    data = Path(cfg["data_dir"])
    fold_csv = paths.fold_csv(data, cfg["jpeg_size"])
    df = read_csv(fold_csv, list(ID_COLUMNS) + list(LABELS) + ["z_pos_order"],
                  dtype=dict.fromkeys(ID_COLUMNS, str))
    jpeg_root, out_root = paths.jpeg_dir(data, cfg["jpeg_size"]), paths.npz_dir(data, cfg["jpeg_size"])
    out_root.mkdir(parents=True, exist_ok=True)
    record = provenance.make("make_npz", {"format": NPZ_FORMAT},
                             {"jpegs": provenance.ref(jpeg_root, out_root),
                              "fold_csv": provenance.ref(fold_csv.parent, out_root)})
    has_outputs = next(out_root.rglob("*.npz"), None) is not None
    if not provenance.guard(out_root, record, has_outputs, cfg["overwrite"], "npz set"):
        save_config(cfg, out_root / "make_npz.yaml")

    groups = [g.sort_values("z_pos_order") for _, g in df.groupby(["StudyInstanceUID", "SeriesInstanceUID"])]
    todo = [g for g in groups if not paths.series_file(out_root, g["StudyInstanceUID"].iloc[0],
                                                       g["SeriesInstanceUID"].iloc[0]).is_file()]
    log.info("%d series, %d already packed, %d to do -> %s", len(groups), len(groups) - len(todo),
             len(todo), out_root)
    if not todo:
        return 0
    fn = functools.partial(pack_series, jpeg_root=jpeg_root, out_root=out_root, compress=cfg["compress"])
    run_series(fn, todo, key=lambda g: (g["StudyInstanceUID"].iloc[0], g["SeriesInstanceUID"].iloc[0]),
               errors_csv=out_root / "errors.csv", workers=cfg["workers"], desc="make_npz")


if __name__ == "__main__":
    cli.run(main)
