"""One study (or every study of a split folder), raw DICOM -> PE probabilities, report, viewer.

    python src/predict_study.py SERIES_DIR [-c configs/inference.yml] [--out DIR] [key=value ...]
    python src/predict_study.py data/test --out DIR      # every <study>/<series>/ folder in it

Uses the same ensemble (run folders, or ``bundle=DIR``), reading and post-processing as
inference.py. For a series it prints the nine exam probabilities and the slices most likely to
show PE, and writes ``<out>/prediction.json``, ``<out>/report.png`` (probability along z, exam
bars, the top slices with their activation maps) and ``<out>/viewer.html`` (docs/viewer.md).
For a split folder it writes those per study in ``<out>/<study>/`` and ``<out>/index.html``,
studies sorted by P(PE). Activation maps (Grad-CAM, rsna_pe.cam) are made for the
``--cam-top-k`` most probable slices, or all with ``--cam-all``.
"""
import json
import logging
import time
from pathlib import Path

import numpy as np

from rsna_pe import cli
from rsna_pe.bundle import load_ensemble
from rsna_pe.cam import ensemble_cam, pick_slices
from rsna_pe.dicom import study_series_uids
from rsna_pe.runtime import pick_device
from rsna_pe.errors import PipelineError
from rsna_pe.io import atomic_write_text
from rsna_pe.labels import EXAM_LABELS
from rsna_pe.report import draw_report
from rsna_pe.viewer import PREVIEW_SIZE, viewer_data, write_index, write_viewer

log = logging.getLogger("predict_study")


def split_series(folder):
    """[(study folder name, series folder)] of a split folder; None if ``folder`` is a series."""
    folder = Path(folder)
    if next(folder.glob("*.dcm"), None) is not None:
        return None
    found = sorted(d for d in folder.glob("*/*") if d.is_dir() and next(d.glob("*.dcm"), None))
    if not found:
        raise PipelineError(f"{folder}: neither .dcm files nor <study>/<series>/ folders holding them")
    studies = [d.parent.name for d in found]
    dup = next((s for s in studies if studies.count(s) > 1), None)
    if dup:
        raise PipelineError(f"{folder / dup}: several series; one series per study is expected")
    return list(zip(studies, found))


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
    atomic_write_text(out / "prediction.json", json.dumps(result, indent=1))
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


def predict_split(ens, studies, out, args):
    """Every study of a split folder; a study that fails is listed in the index, not fatal."""
    rows = []
    for study, series_dir in studies:
        try:
            row = predict_series(ens, series_dir, out / study, args)
            rows.append({**row, "href": f"{study}/viewer.html"})
            print_study(study, row, out / study)
        except PipelineError as e:
            log.warning("study %s: %s", study, e)
            rows.append({"study": study, "error": str(e)})
    write_index(out / "index.html", rows)
    print(f"wrote {out / 'index.html'} ({len(rows)} studies)")
    failed = [r["study"] for r in rows if r.get("error")]
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
        print_study(str(args.series_dir), predict_series(ens, args.series_dir, out, args), out)
    else:
        predict_split(ens, studies, out, args)


if __name__ == "__main__":
    cli.run(main)
