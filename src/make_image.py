"""Stage 1: DICOM series -> 3-window JPEGs in z order, plus a manifest of every slice.

    python src/make_image.py [-c configs/make_image.yml] [key=value ...] [shard=K/N|auto]

Reads ``<data_dir>/<split>.csv`` and ``<data_dir>/<split>/<study>/<series>/*.dcm``; writes
``<data_dir>/<split>-jpegs-<jpeg_size>/<study>/<series>/<zzzz>_<SOP>.jpg`` with the series' own
``manifest.json``, then the set's ``manifest.csv`` (every slice: ids, z_pos_order, z) built from
those, and ``errors.csv`` (series that failed; the command then exits non-zero). A shard writes
``manifest.shard-K-of-N.csv`` and ``errors.shard-K-of-N.csv`` for its series (rsna_pe.records.shards).
With ``jpeg_crop=lung`` (experiment.yml) every series is cut to its lungs' square box first
(rsna_pe.data.lungcrop) into ``<split>-jpegs-<jpeg_size>-lungcrop``; each series' manifest keeps its
box and ``boxes.csv`` (a shard: ``boxes.shard-K-of-N.csv``) lists them all.
An image is named by its header's SOPInstanceUID (by its position in the series when the header
has none: never by the file's name); a series whose file names differ gets one warning.
Ids become file and folder names only if they are safe names (rsna_pe.core.ids): a series with
another study, series or SOP id, like one with a broken header or files of several series, is
listed in errors.csv and the rest are converted. Nothing outside the JPEG set is replaced.
Reruns: finished series are kept, others (new, failed, killed, made with other settings) done;
an unchanged rerun writes nothing; other settings stop with an error unless overwrite=true.
"""
import functools
import logging
from pathlib import Path

from rsna_pe.core import cli, paths
from rsna_pe.core.config import save_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import atomic_to_csv, read_csv
from rsna_pe.core.parallel import SeriesFailures, run_series
from rsna_pe.data.images import (
    conversion_params,
    convert_series,
    finished_boxes,
    finished_key,
    finished_rows,
    has_unknown_series,
)
from rsna_pe.records import provenance, shards

log = logging.getLogger("make_image")
KEY = ["StudyInstanceUID", "SeriesInstanceUID"]


def _convert(key, src_root, out_root, size, quality, digest, crop_margin):
    # An unsafe id is refused here, before any path is made of it (listed in errors.csv).
    convert_series(paths.series_dir(src_root, *key), paths.series_dir(out_root, *key), size, quality,
                   record=digest, crop_margin=crop_margin, root=out_root)


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="make_image.yml", argv=argv)
    data, shard = Path(cfg["data_dir"]), shards.parse(cfg["shard"])
    src_root = data / cfg["split"]
    out_root = paths.jpeg_dir(data, cfg["jpeg_size"], split=cfg["split"], crop=cfg["jpeg_crop"])
    margin = cfg["lung_crop_margin"] if cfg["jpeg_crop"] == "lung" else None
    df = read_csv(data / f"{cfg['split']}.csv", KEY, id_columns=KEY, dtype=str)
    keys = shards.take(set(map(tuple, df[KEY].values)), shard)
    if not src_root.is_dir():
        raise PipelineError(f"{src_root}: DICOM folder not found")
    out_root.mkdir(parents=True, exist_ok=True)
    record = provenance.make("make_image", {"split": cfg["split"],
                                            **conversion_params(cfg["jpeg_size"], cfg["quality"], margin)})
    digest = provenance.digest(record)
    shards.guard(out_root, record, cfg["overwrite"], "JPEG set", shard,
                 unknown_outputs=lambda: has_unknown_series(out_root, digest))
    if (shard is None or shard.index == 0) and not (out_root / "make_image.yaml").is_file():
        save_config(cfg, out_root / "make_image.yaml")

    todo = [k for k in keys if finished_key(out_root, k, digest) is None]
    stems = ("manifest", "errors") + (("boxes",) if margin is not None else ())
    logs = {stem: shards.log_path(out_root, stem, shard) for stem in stems}
    manifest, errors = logs["manifest"], logs["errors"]
    log.info("%s%d series, %d already converted, %d to do -> %s", f"shard {shard}: " if shard else "",
             len(keys), len(keys) - len(todo), len(todo), out_root)
    if not todo and all(p.is_file() for p in logs.values()):
        return 0
    fn = functools.partial(_convert, src_root=src_root, out_root=out_root, size=cfg["jpeg_size"],
                           quality=cfg["quality"], digest=digest, crop_margin=margin)
    try:
        run_series(fn, todo, key=lambda k: k, errors_csv=errors, workers=cfg["workers"], desc="make_image")
        failure = None
    except SeriesFailures as e:
        failure = e
    # Built from the series' own manifests: every finished series, also when some failed now.
    rows, _ = finished_rows(out_root, keys, digest)
    atomic_to_csv(rows, manifest)
    if margin is not None:  # the lung boxes, for people: each series' manifest holds its own
        atomic_to_csv(finished_boxes(out_root, keys, digest), logs["boxes"])
    if failure:
        raise failure
    log.info("done: %d slices in %d series", len(rows), len(keys))


if __name__ == "__main__":
    cli.run(main)
