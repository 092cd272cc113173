"""Training losses. The CNN's are built from config by name (``loss: {name: bce|focal, params:
{...}}``); the stage-6 head's by ``loss.name`` from HEAD_LOSSES (bce or metric).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.errors import PipelineError
from ..core.labels import EXAM_LABELS, EXAM_WEIGHTS, IMAGE_WEIGHT
from .head_options import slice_mask

_EXAM_W = tuple(EXAM_WEIGHTS[k] for k in EXAM_LABELS)


class FocalLoss(nn.Module):
    """Binary focal loss as the original solution wrote it (not torchvision's variant).

    ``bce = BCEWithLogits(x, y, reduction='none'); pt = exp(-bce);
    loss = mean(alpha * (1 - pt) ** gamma * bce)``: alpha scales the whole loss and is
    not a class balance.
    """

    def __init__(self, alpha=1.0, gamma=2.0):
        super().__init__()
        self.alpha = float(alpha)
        self.gamma = float(gamma)

    def forward(self, logits, target):
        bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        pt = torch.exp(-bce)
        return (self.alpha * (1 - pt) ** self.gamma * bce).mean()


LOSSES = {
    "bce": nn.BCEWithLogitsLoss,
    "focal": FocalLoss,
}


def build_loss(spec):
    """``spec`` = ``{name, params}`` from the config."""
    name = spec.get("name")
    if name not in LOSSES:
        raise PipelineError(f"unknown loss.name '{name}' (choose from {', '.join(LOSSES)})")
    try:
        return LOSSES[name](**(spec.get("params") or {}))
    except TypeError as e:
        raise PipelineError(f"bad loss.params for '{name}': {e}") from None


# ----------------------------------------------------------------------------- stage-6 head
def head_bce_loss(image_logits, exam_logits, image_labels, exam_labels, lengths):
    """Mean of the image-level BCE over real slices and the exam-level BCE over 9 labels."""
    mask = slice_mask(lengths, image_logits.shape[1], device=image_logits.device)
    image = F.binary_cross_entropy_with_logits(image_logits[mask].float(), image_labels[mask].float())
    exam = F.binary_cross_entropy_with_logits(exam_logits.float(), exam_labels.float())
    return (image + exam) / 2


def metric_loss(image_logits, exam_logits, image_labels, exam_labels, lengths):
    """The competition's weighted log loss as a training loss, from logits (docs/score.md).

    ``(sum_i sum_k w_k BCE_ik + sum_i sum_j w q_i BCE_ij) / (sum_i sum_k w_k + sum_i n_i w q_i)``
    over the batch, q_i the share of positive images of series i, padding excluded: images of
    negative series weigh nothing, and a batch of negative series carries only its exam terms.
    """
    dtype = torch.promote_types(image_logits.dtype, torch.float32)
    mask = slice_mask(lengths, image_logits.shape[1], device=image_logits.device)
    img_y = torch.where(mask, image_labels.to(dtype), 0)
    q = img_y.sum(1) / mask.sum(1).clamp(min=1)
    w_img = IMAGE_WEIGHT * q[:, None] * mask
    img_bce = F.binary_cross_entropy_with_logits(image_logits.to(dtype), img_y, reduction="none")
    w_exam = torch.tensor(_EXAM_W, dtype=dtype, device=exam_logits.device)
    exam_bce = F.binary_cross_entropy_with_logits(exam_logits.to(dtype), exam_labels.to(dtype), reduction="none")
    num = (exam_bce * w_exam).sum() + torch.where(mask, img_bce * w_img, 0).sum()
    return num / (w_exam.sum() * len(exam_logits) + w_img.sum())


# bce: the recipe's mean of the two BCEs; metric: the competition's weighted log loss
HEAD_LOSSES = {"bce": head_bce_loss, "metric": metric_loss}
