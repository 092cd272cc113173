"""One study (or every study of a split folder), raw DICOM -> PE probabilities, report, viewer.

    python src/predict_study.py SERIES_DIR [-c configs/inference.yml] [--out DIR] [key=value ...]
    python src/predict_study.py data/test --out DIR      # every <study>/<series>/ folder in it

Uses the same ensemble (run folders, or ``bundle=DIR``), reading and post-processing as
inference.py. For a series it prints the nine exam probabilities and the slices most likely to
show PE, and writes ``<out>/prediction.json``, ``<out>/report.png`` (probability along z, exam
bars, the top slices with their activation maps) and ``<out>/viewer.html`` (docs/viewer.md).
For a split folder it writes those per study in ``<out>/<name>/`` and ``<out>/index.html``,
studies sorted by P(PE); ``<name>`` is the study's StudyInstanceUID where that is a safe, unique
folder name, else ``study-<k>`` (never the input folder's name: it may hold a patient's name).
A study that fails, for whatever reason, is listed in the index and the others go on.
Activation maps (Grad-CAM, rsna_pe.viz.cam) are made for the ``--cam-top-k`` most probable slices,
or all with ``--cam-all``.
"""
import logging
import re
import time
from pathlib import Path

import numpy as np

from rsna_pe.core import cli
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.ids import is_safe
from rsna_pe.core.io import atomic_write_json
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.core.runtime import pick_device
from rsna_pe.data.dicom import hex_uids_accepted, read_dataset, series_files, study_series_uids
from rsna_pe.infer.ensemble import load_ensemble
from rsna_pe.viz.cam import ensemble_cam, pick_slices
from rsna_pe.viz.report import draw_report
from rsna_pe.viz.viewer import PREVIEW_SIZE, viewer_data, write_index, write_viewer

log = logging.getLogger("predict_study")


def split_series(folder):
    """[(study folder, [its series folders])] of a split folder; None if ``folder`` is a series."""
    folder = Path(folder)
    if next(folder.glob("*.dcm"), None) is not None:
        return None
    found = sorted(d for d in folder.glob("*/*") if d.is_dir() and next(d.glob("*.dcm"), None))
    if not found:
        raise PipelineError(f"{folder}: neither .dcm files nor <study>/<series>/ folders holding them")
    studies = {}
    for d in found:
        studies.setdefault(d.parent, []).append(d)
    return list(studies.items())


def _header_study_uid(series_dir):
    """The StudyInstanceUID in the series' first file if it is a safe folder name (rsna_pe.core.ids),
    else None."""
    try:
        with hex_uids_accepted():
            uid = read_dataset(series_files(series_dir)[0], header_only=True).get("StudyInstanceUID")
    except Exception:  # unreadable: a positional name; predicting the study says why
        return None
    return str(uid) if uid and is_safe(str(uid)) else None


def output_names(studies):
    """Each study's output folder and name on the pages: its StudyInstanceUID where that is a
    safe folder name used by no other study of the run, else ``study-<k>`` (k: its place among
    the input folders). Input folder names never appear: they may hold a patient's name."""
    uids = [_header_study_uid(dirs[0]) for _, dirs in studies]
    fallback = [f"study-{k + 1}" for k in range(len(studies))]
    return [u if u and uids.count(u) == 1 and u not in fallback else f for u, f in zip(uids, fallback)]


def one_line(e):
    """An exception as one line: a PipelineError's own message, else its type and message."""
    text = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
    return " ".join(text.split())


def page_reason(e, study_dir):
    """``one_line(e)`` for a page: every path, file and folder name replaced by "…"."""
    study_dir = Path(study_dir)
    names = {str(study_dir), str(study_dir.resolve()), str(study_dir.parent), str(study_dir.parent.resolve())}
    for p in [study_dir, *study_dir.glob("*"), *study_dir.glob("*/*")]:  # the split layout's depth
        names |= {p.name, p.stem}
    text = one_line(e)
    for name in sorted((n for n in names if len(n) > 1), key=len, reverse=True):  # "a" tells nothing
        text = text.replace(name, "…")
    return re.sub(r"[^\s:;,()'\"]*/[^\s:;,()'\"]*", "…", text)  # any other path (a config's, ...)


def activation_maps(ens, images, img, args, series_dir):
    """{slice index: map (preview, preview)} for the slices chosen by the --cam options."""
    picked = pick_slices(img, args.cam_top_k, args.cam_all)
    if not len(picked):
        return {}
    t = time.perf_counter()
    maps = ensemble_cam(ens, images, picked, args.preview_size, batch=args.cam_batch,
                        regions=ens.crop_regions(series_dir))
    log.info("activation maps: %d slices x %d CNNs in %.1f s", len(picked), len(ens.members),
             time.perf_counter() - t)
    return {int(k): m for k, m in zip(picked, maps)}


def predict_series(ens, series_dir, out, args):
    """Predict one series and write its json, report and viewer; -> its index.html row."""
    # Previews windowed from the HU at their own size (the model's input may be far smaller),
    # from the same single decode as the models' input.
    infos, images, previews = ens.read_with(series_dir, [args.preview_size])
    exam, img = ens.predict(images)
    study, series = study_series_uids(infos[0].path)
    cams = activation_maps(ens, images, img, args, series_dir)
    exam_d = {k: float(v) for k, v in zip(EXAM_LABELS, exam)}
    result = {"series_dir": str(series_dir), "study": study, "series": series, "exam": exam_d,
              "pe_present": bool(img.max() > 0.5), "activation_map_slices": sorted(cams),
              "slices": [{"z_pos_order": k, "sop": i.sop, "z": i.z, "pe_present_on_image": float(p)}
                         for k, (i, p) in enumerate(zip(infos, img))]}
    atomic_write_json(out / "prediction.json", result, newline=False, indent=1)
    previews = previews[args.preview_size]
    draw_report(out / "report.png", img, exam, previews, cams, title=f"study {study}")
    note = (f"Grad-CAM on {len(cams)} slice(s)" + ("" if args.cam_all else f" (top {args.cam_top_k})"))
    write_viewer(out / "viewer.html", viewer_data(study, series, infos, img, exam_d, previews, cams, note))
    return {"study": study, "slices": len(img), "max_prob": float(img.max()), "exam": exam_d,
            "top": np.argsort(-img, kind="stable")[:5], "img": img}


def print_study(name, row, out):
    width = max(map(len, EXAM_LABELS))
    img = row["img"]
    print(f"{name}: {row['slices']} slices, PE {'present' if row['max_prob'] > 0.5 else 'absent'}")
    for k, v in row["exam"].items():
        print(f"  {k:<{width}} {v:.3f}")
    print("  most suspicious slices (z order: prob): " + ", ".join(f"{k}: {img[k]:.3f}" for k in row["top"]))
    print(f"wrote {out / 'prediction.json'}, {out / 'report.png'} and {out / 'viewer.html'}")


def predict_one(ens, study_dir, series_dirs, out, args):
    """One study of a split folder, written to ``out``: -> its index row; any failure (whatever
    its type) is logged and becomes the row's one-line reason, without paths."""
    try:
        if len(series_dirs) > 1:
            raise PipelineError(f"{study_dir}: {len(series_dirs)} series; one series per study is expected")
        row = predict_series(ens, series_dirs[0], out, args)
        print_study(study_dir.name, row, out)
        return {**row, "href": f"{out.name}/viewer.html"}
    except Exception as e:
        log.warning("study %s: %s", study_dir.name, one_line(e))
        return {"study": out.name, "error": page_reason(e, study_dir)}


def predict_split(ens, studies, out, args):
    """Every study of a split folder; a study that fails is listed in the index, not fatal."""
    rows = [predict_one(ens, study_dir, dirs, out / name, args)
            for (study_dir, dirs), name in zip(studies, output_names(studies))]
    write_index(out / "index.html", rows)
    print(f"wrote {out / 'index.html'} ({len(rows)} studies)")
    failed = [d.name for (d, _), r in zip(studies, rows) if "error" in r]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(rows)} studies failed (first: {failed[0]}); "
                            f"see {out / 'index.html'}")


def _add_args(p):
    p.add_argument("series_dir", type=Path, help="one series' folder of .dcm files, or a split "
                   "folder of <study>/<series>/ folders")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: output/predict_study/<folder name>)")
    p.add_argument("--cam-top-k", type=int, default=8, help="activation maps for the k most "
                   "probable slices (0: none)")
    p.add_argument("--cam-all", action="store_true", help="activation maps for every slice")
    p.add_argument("--cam-batch", type=int, default=16, help="slices per Grad-CAM pass")
    p.add_argument("--preview-size", type=int, default=PREVIEW_SIZE, help="viewer/report image size")


def main(argv=None):
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=_add_args)
    if not args.series_dir.is_dir():
        raise PipelineError(f"{args.series_dir}: not a folder")
    studies = split_series(args.series_dir)
    out = args.out or Path("output/predict_study") / args.series_dir.name
    ens = load_ensemble(cfg, pick_device(cfg["device"]))
    if studies is None:
        try:
            row = predict_series(ens, args.series_dir, out, args)
        except PipelineError:
            raise
        except Exception as e:  # whatever its type: one line naming the series
            raise PipelineError(f"{args.series_dir}: {one_line(e)}") from e
        print_study(str(args.series_dir), row, out)
    else:
        predict_split(ens, studies, out, args)


if __name__ == "__main__":
    cli.run(main)
