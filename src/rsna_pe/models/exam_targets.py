"""Exam labels as extra per-slice targets of the CNN (``model.exam_targets``), so that its
embeddings carry what the exam head needs: where the clots sit, their age, the heart's RV/LV.

Each slice of an exam carries its exam's labels, counted only where a slice can show them
(positive exams are those neither negative_exam_for_pe nor indeterminate):
- location and chronicity (CLOT_LABELS): on the slices of positive exams with
  ``pe_present_on_image`` = 1, where a clot is in view;
- RV/LV (HEART_LABELS): on every slice of positive exams (negative exams carry 0 for both);
- negative_exam_for_pe, indeterminate: on every slice.
The loss is the BCE mean over the counted (slice, label) entries, times ``weight``, added to the
image loss. A horizontally flipped image shows the patient's right on the other side (the
image's left is the patient's right), so its rightsided_pe and leftsided_pe targets swap.
"""
import numpy as np
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from ..core.errors import PipelineError
from ..core.labels import EXAM_LABELS, IMAGE_LABEL

CLOT_LABELS = ("chronic_pe", "acute_and_chronic_pe", "central_pe", "leftsided_pe", "rightsided_pe")
HEART_LABELS = ("rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1")
SIDES = ("rightsided_pe", "leftsided_pe")


def target_labels(mcfg):
    """The exam labels of ``model.exam_targets.labels``, in EXAM_LABELS order (the CNN's extra
    outputs follow the image logit in this order); () when the option is off."""
    spec = (mcfg or {}).get("exam_targets") or {}
    names = spec.get("labels") or []
    bad = [n for n in names if n not in EXAM_LABELS]
    if bad:
        raise PipelineError(f"model.exam_targets.labels: '{bad[0]}' is not an exam label "
                            f"(choose from {', '.join(EXAM_LABELS)})")
    return tuple(n for n in EXAM_LABELS if n in names)


def in_embedding(mcfg):
    """``model.exam_targets.in_embedding``: the embedding the dump and inference hand to the
    head ends with the CNN's own logits (image, then exam labels), so a head trained on a few
    hundred exams need not find those directions again in 2560 dimensions."""
    spec = (mcfg or {}).get("exam_targets") or {}
    if spec.get("in_embedding") and not target_labels(mcfg):
        raise PipelineError("model.exam_targets.in_embedding needs model.exam_targets.labels")
    return bool(spec.get("in_embedding"))


def loss_weight(mcfg):
    return float(((mcfg or {}).get("exam_targets") or {}).get("weight", 1.0))


def columns(names):
    """The fold csv columns the targets are made from."""
    return [IMAGE_LABEL, *dict.fromkeys(["negative_exam_for_pe", "indeterminate", *names])]


def slice_targets(df, names):
    """(targets, weights), float32 (N, K) each, for the N rows of ``df`` and the K labels."""
    positive = ((df["negative_exam_for_pe"] == 0) & (df["indeterminate"] == 0)).to_numpy()
    clot = positive & (df[IMAGE_LABEL].to_numpy() == 1)
    y = np.zeros((len(df), len(names)), np.float32)
    w = np.zeros_like(y)
    for k, name in enumerate(names):
        y[:, k] = df[name].to_numpy(np.float32)
        w[:, k] = clot if name in CLOT_LABELS else positive if name in HEART_LABELS else 1.0
    return y, w


def flip_order(names):
    """Index order of the (1 + K) targets of a flipped image (image target first), or None when
    no side label is among ``names``."""
    outputs = [IMAGE_LABEL, *names]
    present = set(SIDES) & set(outputs)
    if not present:
        return None
    if len(present) == 1:
        raise PipelineError("model.exam_targets.labels: rightsided_pe and leftsided_pe go "
                            "together (a flipped image swaps them)")
    swap = dict(zip(SIDES, reversed(SIDES)))
    return np.array([outputs.index(swap.get(n, n)) for n in outputs])


def exam_loss(logits, y, w):
    """BCE mean over the counted entries of (B, K) logits; 0 where a batch counts none."""
    bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (bce * w).sum() / w.sum().clamp(min=1.0)


def val_aucs(logits, y, w, names):
    """AUC of each extra output over its counted slices (NaN with one class only)."""
    out = {}
    for k, name in enumerate(names):
        keep = w[:, k] > 0
        yk = y[keep, k].numpy()
        out[f"val_auc_{name}"] = float(roc_auc_score(yk, logits[keep, k].numpy())) \
            if 0 < yk.sum() < len(yk) else float("nan")
    return out


def exam_metrics(loss_fn, logits, labels, weights, names, weight):
    """Validation numbers of a CNN with extra outputs: val_loss is the training objective."""
    image_loss = float(loss_fn(logits[:, 0], labels[:, 0]))
    extra = float(exam_loss(logits[:, 1:], labels[:, 1:], weights))
    return {"val_loss": image_loss + weight * extra, "val_image_loss": image_loss,
            "val_exam_loss": extra, **val_aucs(logits[:, 1:], labels[:, 1:], weights, names)}
