"""Stage 1: DICOM series -> 3-window JPEGs in z order, plus a manifest of every slice.

    python src/make_image.py [-c configs/make_image.yml] [key=value ...]

Reads ``<data_dir>/<split>.csv`` and ``<data_dir>/<split>/<study>/<series>/*.dcm``; writes
``<data_dir>/<split>-jpegs-<jpeg_size>/<study>/<series>/<zzzz>_<SOP>.jpg``, ``manifest.csv`` and, when
series fail, ``errors.csv`` (and exits non-zero). Finished series are skipped on a rerun.
"""
import functools
import logging
from pathlib import Path

import pandas as pd

from rsna_pe import cli, paths, provenance
from rsna_pe.config import save_config
from rsna_pe.errors import PipelineError
from rsna_pe.images import conversion_params, convert_series, list_series_jpegs
from rsna_pe.io import atomic_to_csv, read_csv
from rsna_pe.parallel import SeriesFailures, run_series

log = logging.getLogger("make_image")
MANIFEST_COLUMNS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "z_pos_order", "z"]


def _convert(key, src_root, out_root, size, quality):
    study, series = key
    rows = convert_series(src_root / study / series, out_root / study / series, size, quality)
    return [(study, series, sop, k, z) for k, sop, z in rows]


def _known_rows(out_root, done, manifest):
    """Manifest rows of already-converted series: from the last manifest, else from file names."""
    old = pd.read_csv(manifest, dtype={"StudyInstanceUID": str, "SeriesInstanceUID": str,
                                       "SOPInstanceUID": str}) if manifest.is_file() else None
    have = set(map(tuple, old[MANIFEST_COLUMNS[:2]].drop_duplicates().values)) if old is not None else set()
    rows = [old[old.set_index(MANIFEST_COLUMNS[:2]).index.isin(done)]] if old is not None else []
    for study, series in done - have:  # interrupted before the manifest was written: z unknown
        rows.append(pd.DataFrame(
            [(study, series, sop, k, float("nan")) for k, sop, _ in list_series_jpegs(out_root / study / series)],
            columns=MANIFEST_COLUMNS))
    return rows


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="make_image.yml", argv=argv)
    data = Path(cfg["data_dir"])
    src_root = data / cfg["split"]
    out_root = paths.jpeg_dir(data, cfg["jpeg_size"], cfg["split"])
    df = read_csv(data / f"{cfg['split']}.csv", ["StudyInstanceUID", "SeriesInstanceUID"], dtype=str)
    keys = sorted(set(map(tuple, df[["StudyInstanceUID", "SeriesInstanceUID"]].values)))
    if not src_root.is_dir():
        raise PipelineError(f"{src_root}: DICOM folder not found")
    out_root.mkdir(parents=True, exist_ok=True)
    manifest = out_root / "manifest.csv"
    record = provenance.make("make_image", {"split": cfg["split"], **conversion_params(cfg["jpeg_size"], cfg["quality"])})
    has_outputs = manifest.is_file() or any(p.is_dir() for p in out_root.iterdir())
    if not provenance.guard(out_root, record, has_outputs, cfg["overwrite"], "JPEG set"):
        save_config(cfg, out_root / "make_image.yaml")

    # A series folder exists only once complete (atomic rename), so existence means done.
    done = {k for k in keys if (out_root / k[0] / k[1]).is_dir()}
    todo = [k for k in keys if k not in done]
    log.info("%d series, %d already converted, %d to do -> %s", len(keys), len(done), len(todo), out_root)
    if not todo and manifest.is_file():
        return 0
    fn = functools.partial(_convert, src_root=src_root, out_root=out_root,
                           size=cfg["jpeg_size"], quality=cfg["quality"])
    frames = _known_rows(out_root, done, manifest)
    try:
        results, failure = run_series(fn, todo, key=lambda k: k, errors_csv=out_root / "errors.csv",
                                      workers=cfg["workers"], desc="make_image"), None
    except SeriesFailures as e:
        results, failure = e.done, e
    # The manifest lists every converted series, also when some failed.
    frames += [pd.DataFrame(rows, columns=MANIFEST_COLUMNS) for _, rows in results]
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=MANIFEST_COLUMNS)
    atomic_to_csv(out.sort_values(MANIFEST_COLUMNS[:2] + ["z_pos_order"]), manifest)
    if failure:
        raise failure
    log.info("done: %d slices in %d series", len(out), len(keys))


if __name__ == "__main__":
    cli.run(main)
