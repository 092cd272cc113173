"""Optimizer and LR schedule built from config by name (``{name, params}``)."""
import torch

from ..core.errors import PipelineError


def _optimizers():
    return {n.lower(): c for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)}


def build_optimizer(spec, params):
    """``{name, params}``: any torch.optim class by name, case-insensitive (AdamW = adamw)."""
    name = str(spec.get("name", ""))
    cls = _optimizers().get(name.lower())
    if cls is None:
        raise PipelineError(f"unknown optimizer.name '{name}' (a torch.optim class, e.g. AdamW)")
    try:
        return cls(params, **(spec.get("params") or {}))
    except TypeError as e:
        raise PipelineError(f"bad optimizer.params for {name}: {e}") from None


def _cosine(optimizer, epochs, eta_min=0.0):
    # Stepped once per epoch: the LR of epoch e is eta_min + (lr - eta_min)(1 + cos(pi e / T))/2.
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)


def _constant(optimizer, epochs):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)


SCHEDULERS = {"cosine": _cosine, "constant": _constant}


def build_scheduler(spec, optimizer, epochs):
    name = spec.get("name")
    if name not in SCHEDULERS:
        raise PipelineError(f"unknown scheduler.name '{name}' (choose from {', '.join(SCHEDULERS)})")
    try:
        return SCHEDULERS[name](optimizer, epochs, **(spec.get("params") or {}))
    except TypeError as e:
        raise PipelineError(f"bad scheduler.params for {name}: {e}") from None
