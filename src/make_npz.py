"""Stage 4: pack each series' JPEGs (z order) and labels into one npz.

    python src/make_npz.py [-c configs/make_npz.yml] [key=value ...] [shard=K/N|auto]

Writes ``<data_dir>/npz/train-jpegs-<jpeg_size>/<study>/<series>.npz`` with the series' JPEG
files as they are (``jpeg``, ``jpeg_offsets``, ``format``; see rsna_pe.data.images), ``labels``
float32 (S, 10) in LABELS order, ``sop`` (S,) and ``record`` (the digest of the npz set's
record it was made under). A series with a missing or corrupt JPEG is logged to ``errors.csv``
(a shard: ``errors.shard-K-of-N.csv``) and the command exits non-zero after packing every
other series. Reruns: finished files are kept, others (new, failed, killed, made under another
record) packed; an unchanged rerun writes nothing; new inputs or settings stop with an error
unless overwrite=true. Ids become file names only if they are safe names (rsna_pe.core.ids): a series
with another is logged to errors.csv like a corrupt one.
"""
import functools
import logging
import zipfile
from pathlib import Path

import numpy as np

from rsna_pe.core import cli, ids, paths
from rsna_pe.core.config import save_config
from rsna_pe.core.io import atomic_savez, read_csv
from rsna_pe.core.labels import ID_COLUMNS, LABELS
from rsna_pe.core.parallel import run_series
from rsna_pe.data.images import NPZ_FORMAT, jpeg_name, pack_jpeg_files
from rsna_pe.records import provenance, shards

log = logging.getLogger("make_npz")


def pack_series(group, jpeg_root, out_root, compress, digest):
    """Rows of one series (sorted by z_pos_order) -> its npz."""
    study, series = group["StudyInstanceUID"].iloc[0], group["SeriesInstanceUID"].iloc[0]
    folder, where = paths.series_dir(jpeg_root, study, series), ids.series_name(study, series)
    files = [folder / jpeg_name(z, sop, where) for z, sop in zip(group["z_pos_order"], group["SOPInstanceUID"])]
    atomic_savez(paths.series_file(out_root, study, series), compress=compress,
                 **pack_jpeg_files(files),
                 labels=group[list(LABELS)].to_numpy(np.float32),
                 sop=group["SOPInstanceUID"].to_numpy(str), record=np.array(digest))
    return len(files)


def npz_record(path):
    """The record digest an npz was made under; None for a missing, unreadable or older file."""
    try:
        with np.load(path) as z:
            return str(z["record"]) if "record" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="make_npz.yml", argv=argv)
    data, shard = Path(cfg["data_dir"]), shards.parse(cfg["shard"])
    fold_csv = paths.fold_csv(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"])
    df = read_csv(fold_csv, list(ID_COLUMNS) + list(LABELS) + ["z_pos_order"], id_columns=ID_COLUMNS,
                  dtype=dict.fromkeys(ID_COLUMNS, str))
    jpeg_root, out_root = paths.jpeg_dir(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"]), \
        paths.npz_dir(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"])
    out_root.mkdir(parents=True, exist_ok=True)
    record = provenance.make("make_npz", {"format": NPZ_FORMAT},
                             {"jpegs": provenance.ref(jpeg_root, out_root),
                              "fold_csv": provenance.ref(fold_csv.parent, out_root)})
    digest = provenance.digest(record)
    shards.guard(out_root, record, cfg["overwrite"], "npz set", shard,
                 unknown_outputs=lambda: any(npz_record(p) != digest for p in out_root.rglob("*.npz")))
    if (shard is None or shard.index == 0) and not (out_root / "make_npz.yaml").is_file():
        save_config(cfg, out_root / "make_npz.yaml")

    groups = dict(iter(df.groupby(["StudyInstanceUID", "SeriesInstanceUID"])))
    keys = shards.take(groups, shard)
    # A key with an unsafe id is never looked up: it is packed, i.e. refused and logged.
    todo = [groups[k].sort_values("z_pos_order") for k in keys
            if not all(map(ids.is_safe, k)) or npz_record(paths.series_file(out_root, *k)) != digest]
    errors = shards.log_path(out_root, "errors", shard)
    log.info("%s%d series, %d already packed, %d to do -> %s", f"shard {shard}: " if shard else "",
             len(keys), len(keys) - len(todo), len(todo), out_root)
    if not todo and errors.is_file():
        return 0
    fn = functools.partial(pack_series, jpeg_root=jpeg_root, out_root=out_root, compress=cfg["compress"],
                           digest=digest)
    run_series(fn, todo, key=lambda g: (g["StudyInstanceUID"].iloc[0], g["SeriesInstanceUID"].iloc[0]),
               errors_csv=errors, workers=cfg["workers"], desc="make_npz")


if __name__ == "__main__":
    cli.run(main)
