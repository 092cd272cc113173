"""A stage-6 head's out-of-fold outputs: its validation predictions merged per study, scored
(rsna_pe.metric), and written into its run folder as oof.csv, scores.json and prior.json
(docs/training.md)."""
import json
import logging
from pathlib import Path

import numpy as np

from .. import metric
from ..core.io import atomic_to_csv, atomic_write_text, json_ready
from ..core.labels import N_EXAM
from ..core.paths import PRIOR_FILE

log = logging.getLogger(__name__)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _bce_logits(logits, target):
    """Mean binary cross-entropy from logits (numpy, numerically stable)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))) if x.size else float("nan")


def _records(df):
    """A per-label table as JSON-ready rows; NaN (e.g. an AUC of one class) becomes null."""
    return [json_ready(row) for row in df.to_dict(orient="records")]


def merge_outputs(outs):
    """Every batch's ``out`` -> one record per study, in first-seen order. A study seen twice
    (a sampler that pads ranks to equal length repeats a few) counts once."""
    seen, rec = set(), {k: [] for k in ("study", "sop", "exam_logits", "image_logits",
                                        "exam_true", "image_true")}
    for out in outs:
        for i, study in enumerate(out["study"]):
            if study in seen:
                continue
            seen.add(study)
            for k in rec:
                rec[k].append(out[k][i])
    rec["exam_logits"] = np.asarray(rec["exam_logits"], dtype=np.float64).reshape(-1, N_EXAM)
    rec["exam_true"] = np.asarray(rec["exam_true"], dtype=np.float64).reshape(-1, N_EXAM)
    return rec


def score_outputs(rec):
    """Scores of merged outputs: ``metrics`` for the trainer's log (val_loss, the competition
    score raw and post-processed, per-label log loss), the probabilities, the post-processed
    exam probabilities and the per-label tables (raw and post-processed)."""
    img_logits = np.concatenate(rec["image_logits"]) if rec["image_logits"] else np.zeros(0)
    img_true = np.concatenate(rec["image_true"]) if rec["image_true"] else np.zeros(0)
    image_loss = _bce_logits(img_logits, img_true)
    exam_loss = _bce_logits(rec["exam_logits"], rec["exam_true"])
    exam_prob = _sigmoid(rec["exam_logits"])
    img_prob = [_sigmoid(x) for x in rec["image_logits"]]
    exam_pp = metric.postprocess(exam_prob, img_prob)
    truth = (rec["exam_true"], rec["image_true"])
    m = {"val_loss": (image_loss + exam_loss) / 2, "val_loss_image": image_loss, "val_loss_exam": exam_loss,
         "score": float(metric.weighted_log_loss(truth[0], exam_prob, truth[1], img_prob)),
         "score_pp": float(metric.weighted_log_loss(truth[0], exam_pp, truth[1], img_prob))}
    per_label = metric.per_label_log_loss(truth[0], exam_prob, truth[1], img_prob)
    per_label_pp = metric.per_label_log_loss(truth[0], exam_pp, truth[1], img_prob)
    for label, ll in zip(per_label["label"], per_label["logloss"]):
        m[f"logloss_{label}"] = float(ll)
    return {"metrics": m, "exam_prob": exam_prob, "img_prob": img_prob, "exam_pp": exam_pp,
            "per_label": per_label, "per_label_pp": per_label_pp}


def write_oof(run_dir, rec, prior, cnn_run, fold):
    """Write a head's out-of-fold outputs into ``run_dir``: oof.csv (post-processed, submission
    layout) and scores.json from ``rec`` (merge_outputs of its whole validation fold), and
    prior.json (``prior``: the label prior inference falls back on for a study it cannot read)."""
    scored = score_outputs(rec)
    run_dir = Path(run_dir)
    atomic_to_csv(metric.to_submission(rec["study"], scored["exam_pp"], rec["sop"], scored["img_prob"]),
                  run_dir / "oof.csv")
    m = scored["metrics"]
    scores = {"cnn_run": cnn_run, "fold": fold, "studies": len(rec["study"]),
              "images": int(sum(len(s) for s in rec["sop"])), "val_loss": m["val_loss"],
              "score": m["score"], "score_postprocessed": m["score_pp"],
              "per_label": _records(scored["per_label"]),
              "per_label_postprocessed": _records(scored["per_label_pp"])}
    atomic_write_text(run_dir / "scores.json", json.dumps(scores, indent=2) + "\n")
    atomic_write_text(run_dir / PRIOR_FILE, json.dumps(prior, indent=2) + "\n")
    log.info("oof: %d studies, score %.5f (post-processed %.5f) -> %s",
             scores["studies"], m["score"], m["score_pp"], run_dir / "oof.csv")
