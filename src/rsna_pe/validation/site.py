"""Site validation end to end: read the labels and predictions, compute every number (overall,
per subgroup, before and after calibration), and write metrics.json, the plots and the report."""
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .. import metric
from ..core.errors import PipelineError
from ..core.io import atomic_path, atomic_write_text, checked_number, read_csv
from ..core.labels import EXAM_LABELS
from . import calibration, inputs, plots, report, subgroups, thresholds
from .acquisition import read_subgroup_csv
from .jsonio import write_json
from .metrics import ECE_BINS, LEVEL, brier, label_metrics, log_loss, reliability

FORMAT, FORMAT_VERSION = "rsna-pe-site-validation", 1
DEFAULT_MIN_GROUP = 20


def read_image_map(path):
    """SOP -> study of a csv with StudyInstanceUID and SOPInstanceUID (e.g. data/test.csv)."""
    df = read_csv(path, [inputs.STUDY, inputs.SOP], dtype=str)
    return pd.Series(df[inputs.STUDY].to_numpy(), index=df[inputs.SOP].to_numpy())


def primary_label(matched):
    """The label that stratifies the calibration split and heads the forest plot."""
    return inputs.PE_PRESENT if inputs.PE_PRESENT in matched.y.columns else matched.y.columns[0]


def competition_score(labels, preds, matched):
    """{value, kind, note}: the full score with image labels and predictions for every image,
    the exam-level part alone with all nine exam labels only, else nothing."""
    st = matched.studies
    missing = [k for k in EXAM_LABELS if k not in labels.table.columns]
    if missing or labels.table.loc[st, list(EXAM_LABELS)].isna().any(axis=None):
        return {"value": None, "kind": None,
                "note": "the score needs all nine exam labels for every study; missing: "
                        + (", ".join(missing) or "some values")}
    exam_pred = preds.exam.reindex(st)[list(EXAM_LABELS)]
    if exam_pred.isna().any(axis=None):
        return {"value": None, "kind": None, "note": "some studies lack exam predictions"}
    img_true, img_pred = _image_pairs(labels, preds, st)
    full = img_true is not None
    if not full:
        img_true = img_pred = [np.zeros(0)] * len(st)  # no image term: the exam-level part alone
    value = metric.weighted_log_loss(labels.table.loc[st, list(EXAM_LABELS)].to_numpy(),
                                     exam_pred.to_numpy(), img_true, img_pred)
    return {"value": value, "kind": "full" if full else "exam level only",
            "note": "As the competition scored it (docs/score.md)." if full else
            "The image labels (or image predictions) are not all there, so the image term is left out; "
            "this is not comparable with the competition's score."}


def _image_pairs(labels, preds, studies):
    """(image truth, image predictions aligned by SOP) per study, or (None, None) if incomplete."""
    if labels.images is None:
        return None, None
    truth, pred = [], []
    for s in studies:
        if s not in labels.images or s not in preds.images:
            return None, None
        sops, y = labels.images[s]
        p = pd.Series(preds.images[s][1], index=preds.images[s][0]).reindex(sops)
        if p.isna().any() or np.isnan(y).any():
            return None, None
        truth.append(np.asarray(y, dtype=np.float64))
        pred.append(p.to_numpy(dtype=np.float64))
    return truth, pred


def evaluate(matched, points, n_boot, seed, progress, rows=None, key="all", band=False):
    """({label: metrics}, {label: curves}) over the studies ``rows`` ((N,) bool; all if None)."""
    rows = np.ones(len(matched.studies), dtype=bool) if rows is None else rows
    out, curves = {}, {}
    for label in matched.y.columns:
        out[label], curves[label] = label_metrics(
            matched.y[label].to_numpy()[rows], matched.p[label].to_numpy()[rows],
            thresholds.points_for(points, label), n_boot, seed, f"{key}|{label}", band, progress)
    return out, curves


def subgroup_results(matched, sets, points, n_boot, seed, progress):
    out = {}
    index = {s: i for i, s in enumerate(matched.studies)}
    for column, gs in sets.items():
        out[column] = []
        for g in gs:
            rows = np.zeros(len(matched.studies), dtype=bool)
            rows[[index[s] for s in g.studies]] = True
            m, _ = evaluate(matched, points, n_boot, seed, progress, rows, key=f"{column}={g.name}")
            for numbers in m.values():  # the bins stay with the whole site's numbers: a group's ECE suffices
                del numbers["reliability"]
            out[column].append({"group": g.name, "pooled_from": g.pooled_from, "below_minimum": g.small,
                                "n_studies": len(g.studies), "labels": m})
    return out


def _held_out_numbers(y, p):
    ece, rel = reliability(y, p)
    return {"n": int(len(y)), "n_pos": int(np.sum(y)), "ece": ece, "brier": brier(y, p),
            "log_loss": log_loss(y, p), "reliability": rel}


def calibration_result(matched, fraction, seed, method, out):
    """Fit on a stratified calibration split, write calibration.json, and the held-out
    numbers before and after."""
    calib = calibration.split(matched.y[primary_label(matched)].to_numpy(), fraction, seed)
    if calib.all() or not calib.any():
        raise PipelineError(f"--calibrate-split {fraction}: leaves no calibration or no held-out study")
    info = {"fraction": fraction, "seed": seed, "n_studies": int(calib.sum()),
            "stratified_on": primary_label(matched)}
    doc = calibration.fit_block(matched.y, matched.p, calib, method, info)
    path = calibration.write(doc, Path(out))
    res = {"method": method, "fraction": fraction, "seed": seed, "file": path.name,
           "n_calibration": int(calib.sum()), "n_held_out": int((~calib).sum()),
           "min_per_class": calibration.MIN_PER_CLASS, "labels": {},
           "not_fit": [k for k in matched.y.columns if k not in doc["labels"]]}  # too few of a class
    for label, params in doc["labels"].items():
        keep = ~calib & matched.y[label].notna().to_numpy() & matched.p[label].notna().to_numpy()
        y, p = matched.y[label].to_numpy()[keep], matched.p[label].to_numpy()[keep]
        res["labels"][label] = {"params": {k: v for k, v in params.items() if k not in ("n", "n_pos")},
                                "before": _held_out_numbers(y, p),
                                "after": _held_out_numbers(y, calibration.apply(params, p))}
    return res


def _subgroup_sets(matched, preds, subgroups_csv, min_group):
    """({column: [Group]}, where they came from)."""
    if subgroups_csv:
        return subgroups.subgroup_sets(read_subgroup_csv(subgroups_csv, inputs.ALIASES[inputs.STUDY]),
                                       matched.studies, min_group), str(subgroups_csv)
    if preds.acquisition is not None:
        return subgroups.subgroup_sets(preds.acquisition, matched.studies, min_group), "prediction.json acquisition"
    return {}, None


def _write_png(path, data):
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def draw(res, curves, out):
    """The PNGs, written to ``out`` and returned by name for the html page."""
    labels = res["labels"]
    images = {"roc.png": plots.roc([(k, labels[k], curves[k]) for k in labels]),
              "reliability.png": plots.reliability(
                  [(f"{k}: ECE {report.f3(m['ece'])}", {"site": m["reliability"]}) for k, m in labels.items()])}
    if res["subgroups"]:
        label = res["primary_label"]
        rows = [("whole site", labels[label]["auc"], labels[label]["auc_ci"], labels[label]["n"])]
        for column, gs in res["subgroups"].items():
            rows += [(f"{column}: {g['group']}", g["labels"][label]["auc"], g["labels"][label]["auc_ci"],
                      g["labels"][label]["n"]) for g in gs]
        images["forest.png"] = plots.forest(rows, label)
    if res["calibration"]:
        images["calibration.png"] = plots.reliability(
            [(f"{k} (held out)", {"before": c["before"]["reliability"], "after": c["after"]["reliability"]})
             for k, c in res["calibration"]["labels"].items()])
    for name, data in images.items():
        _write_png(Path(out) / name, data)
    return images


def run(labels_path, predictions_path, out, operating_points=None, calibrate_fraction=None, seed=0,
        subgroups_csv=None, n_boot=2000, min_group=DEFAULT_MIN_GROUP, images_csv=None,
        method="platt"):
    """Validate ``predictions_path`` against ``labels_path``; write everything to ``out``."""
    if n_boot < 1 or min_group < 1:
        raise PipelineError("--n-boot and --min-group must be at least 1")
    if calibrate_fraction is not None:  # checked before the minutes of bootstrap, not after
        checked_number(calibrate_fraction, "--calibrate-split", 0.0, 1.0)
    labels = inputs.read_labels(labels_path)
    sop_study = read_image_map(images_csv) if images_csv else labels.sop_study
    preds = inputs.read_predictions(predictions_path, sop_study)
    matched = inputs.match(labels, preds)
    points = thresholds.read(operating_points) if operating_points else None
    sets, sets_source = _subgroup_sets(matched, preds, subgroups_csv, min_group)
    n_tasks = len(matched.y.columns) * (1 + sum(len(g) for g in sets.values()))
    with tqdm(total=n_tasks * n_boot, desc="bootstrap", unit="resample", dynamic_ncols=True) as bar:
        overall, curves = evaluate(matched, points, n_boot, seed, bar, band=True)
        by_group = subgroup_results(matched, sets, points, n_boot, seed, bar)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"format": FORMAT, "format_version": FORMAT_VERSION,
           "inputs": {"labels": str(labels_path), "predictions": str(predictions_path),
                      "kind": "prediction.json folder" if Path(predictions_path).is_dir() else "submission csv",
                      "n_studies": len(matched.studies), "labels_scored": list(matched.y.columns),
                      "operating_points": str(operating_points) if operating_points else None,
                      "subgroups": sets_source},
           "settings": {"n_boot": n_boot, "seed": seed, "min_group": min_group, "level": LEVEL,
                        "ece_bins": ECE_BINS, "threshold_rule": thresholds.RULE,
                        "pe_present_prediction": "largest image probability of the study"},
           "notes": matched.notes, "primary_label": primary_label(matched),
           "competition_score": competition_score(labels, preds, matched),
           "labels": overall, "subgroups": by_group,
           "subgroup_notes": subgroups.pooled_notes(sets, min_group),
           "subgroup_note": "no subgroup csv and no acquisition fields in the predictions" if sets_source is None
           else f"{sets_source}: no column splits these studies into two or more groups",
           "calibration": calibration_result(matched, calibrate_fraction, seed, method, out)
           if calibrate_fraction is not None else None}
    images = draw(res, curves, out)
    blocks = report.blocks_of(res, images)
    atomic_write_text(out / "report.md", report.render_md(blocks))
    atomic_write_text(out / "report.html", report.render_html(blocks))
    write_json(out / "metrics.json", res)
    return res
