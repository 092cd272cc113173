"""One series predicted and its outputs written: prediction.json, the report figure, the viewer
and, when asked, the DICOM objects. predict_study.py and the DICOM node (rsna_pe.serve.node) both
predict through ``predict_series``.
"""
import logging
import time

import numpy as np

from ..core.errors import PipelineError
from ..core.io import atomic_write_json
from ..core.labels import EXAM_LABELS
from ..data.acquisition import series_acquisition
from ..data.dicom import series_where
from ..viz.cam import ensemble_cam, pick_slices
from ..viz.dicom_out import DicomOut, algorithm_identity, write_objects
from ..viz.report import draw_report
from ..viz.viewer import viewer_data, write_viewer

log = logging.getLogger("predict_study")


def message(e):
    """A PipelineError's own message, else the exception's type and message."""
    return str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"


def one_line(e):
    """An exception as one line (see _message)."""
    return " ".join(message(e).split())


# Why an ensemble run by ONNX Runtime has no maps (rsna_pe.infer.onnx_runtime): on the pages
# and the report, and in prediction.json.
NO_MAPS = "no activation maps: the models ran with ONNX Runtime (runtime onnx), Grad-CAM needs runtime torch"


def activation_maps(ens, images, img, args, series_dir):
    """{slice index: map (preview, preview)} for the slices chosen by the --cam options (none
    for an ensemble without torch models)."""
    picked = pick_slices(img, args.cam_top_k, args.cam_all)
    if not len(picked) or not getattr(ens, "explains", True):
        return {}
    t = time.perf_counter()
    maps = ensemble_cam(ens, images, picked, args.preview_size, batch=args.cam_batch,
                        regions=ens.crop_regions(series_dir))
    log.info("activation maps: %d slices x %d CNNs in %.1f s", len(picked), len(ens.members),
             time.perf_counter() - t)
    return {int(k): m for k, m in zip(picked, maps)}


def predict_series(ens, series_dir, out, args, skipped=()):
    """Predict one series (a folder or a list of files) and write its json, report and viewer;
    ``skipped``: the study's other series [(Series, why)]; -> its index.html row."""
    # Previews windowed from the HU at their own size (the model's input may be far smaller),
    # from the same single decode as the models' input.
    infos, images, previews = ens.read_with(series_dir, [args.preview_size])
    exam, img = ens.predict(images)
    # The headers were read with the slices: no second read of the first file.
    study, series = infos[0].study or "unknown", infos[0].series or "unknown"
    cams = activation_maps(ens, images, img, args, series_dir)
    exam_d = {k: float(v) for k, v in zip(EXAM_LABELS, exam)}
    result = {"series_dir": series_where(series_dir), "study": study, "series": series, "exam": exam_d,
              "pe_present": bool(img.max() > 0.5), "activation_map_slices": sorted(cams),
              "slices": [{"z_pos_order": k, "sop": i.sop, "z": i.z, "pe_present_on_image": float(p)}
                         for k, (i, p) in enumerate(zip(infos, img))],
              # the scanner fields only (no patient tag), for site validation's subgroups
              "acquisition": series_acquisition(infos), "calibration": ens.calibration_info}
    if skipped:  # only then: a study of one series (the Kaggle layout) gets the json as before
        result["skipped_series"] = [{"series": s.uid, "images": len(s.files), "reason": why} for s, why in skipped]
    no_maps = "" if getattr(ens, "explains", True) else NO_MAPS
    if no_maps:  # only then: the torch runtime's json stays as it was
        result.update(runtime=ens.runtime, activation_maps=no_maps)
    atomic_write_json(out / "prediction.json", result, newline=False, indent=1)
    previews = previews[args.preview_size]
    draw_report(out / "report.png", img, exam, previews, cams, title=f"study {study}", no_maps=no_maps)
    note = (f"Grad-CAM on {len(cams)} slice(s)" + ("" if args.cam_all else f" (top {args.cam_top_k})"))
    write_viewer(out / "viewer.html", viewer_data(study, series, infos, img, exam_d, previews, cams, note,
                                                  no_maps=no_maps))
    if getattr(args, "dicom", None):  # main sets it; a caller of predict_series may not
        write_objects(args.dicom, infos, exam, img, previews, cams)
    return {"study": study, "slices": len(img), "max_prob": float(img.max()), "exam": exam_d,
            "top": np.argsort(-img, kind="stable")[:5], "img": img}


def dicom_options(cfg, ens, args):
    """--dicom-out's options (None: no DICOM written)."""
    if args.dicom_out is None:
        return None
    k = args.cam_top_k if args.dicom_key_images is None else args.dicom_key_images
    return DicomOut(args.dicom_out, args.dicom_uid_root or cfg["dicom_uid_root"],
                    args.dicom_deterministic_uids or cfg["deterministic_uids"], k,
                    algorithm_identity(cfg, ens.sources))
