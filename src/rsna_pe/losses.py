"""Losses built from config by name: ``loss: {name: bce|focal, params: {...}}``."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import PipelineError


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
