"""Stage 3's network: the slice-level CNN (timm backbone + GeM + MLP head).

The network takes 3 channels (the lung, PE, mediastinal windows of a slice, or with
``dataset.input: neighbours`` the PE window of slices z-1, z, z+1: rsna_pe.data.model_input) in the
0-255 range, uint8 or float, and normalises inside ``forward`` with the backbone's pretrained
mean/std, so later stages feed it the JPEGs'/npz's pixels as they are. ``embedding(x)`` is what
stages 5 and 7 hand to the head: the pooled features (2560 for rexnet_200), followed by the
CNN's own logits with ``model.exam_targets.in_embedding``. Its data is rsna_pe.data.slice_data, its
training task rsna_pe.train.cnn_task.
"""
import logging
import re
from pathlib import Path

import timm
import timm.models
import torch
import torch.nn as nn

from ..core.errors import PipelineError
from . import exam_targets

log = logging.getLogger(__name__)


class GeM(nn.Module):
    """Generalised-mean pooling: ``mean(clamp(x, eps) ** p) ** (1 / p)`` with learnable p."""

    def __init__(self, p=3.0, eps=1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x):
        # fp32: pow of bf16/fp16 activations loses the small values GeM is meant to keep.
        x = x.float().clamp(min=self.eps).pow(self.p)
        return x.mean(dim=(-2, -1)).pow(1.0 / self.p)


class AvgPool(nn.Module):
    def forward(self, x):
        return x.float().mean(dim=(-2, -1))


POOLS = {"gem": GeM, "avg": AvgPool}


class RSNACNN(nn.Module):
    """timm backbone (feature map) -> pool -> dropout -> Linear-BN-ReLU-Linear -> 1 logit.

    With ``exam_labels`` (rsna_pe.models.exam_targets) a second head of the same shape on the same
    features gives one logit per exam label, trained per slice so the features carry them.
    """

    def __init__(self, backbone, pool="gem", pool_params=None, dropout=0.5, hidden=256,
                 mean=None, std=None, exam_labels=(), logits_in_embedding=False):
        super().__init__()
        self.backbone = backbone
        # The backbone's feature map as a module output, so hooks (Grad-CAM, rsna_pe.viz.cam) see it:
        # forward_features is a method call no module hook sees. No weights: state_dict unchanged.
        self.feature_map = nn.Identity()
        if pool not in POOLS:
            raise PipelineError(f"unknown model.pool '{pool}' (choose from {', '.join(POOLS)})")
        self.pool = POOLS[pool](**(pool_params or {}))
        n = backbone.num_features
        self.num_features = n
        self.drop = nn.Dropout(dropout)
        self.head = nn.Sequential(nn.Linear(n, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, 1))
        self.exam_labels = tuple(exam_labels)
        self.logits_in_embedding = bool(logits_in_embedding)
        if self.exam_labels:  # built after the image head: the recipe's init draws stay the same
            self.exam_head = nn.Sequential(nn.Linear(n, hidden), nn.BatchNorm1d(hidden),
                                           nn.ReLU(inplace=True), nn.Linear(hidden, len(self.exam_labels)))
        data_cfg = backbone.pretrained_cfg or {}
        mean = mean or data_cfg.get("mean", (0.485, 0.456, 0.406))
        std = std or data_cfg.get("std", (0.229, 0.224, 0.225))
        # Stored in the state dict: a checkpoint normalises exactly as it was trained.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255)

    def features(self, x):
        """(B,3,H,W) RGB 0-255 -> (B, num_features) pooled embedding (before dropout/head)."""
        x = (x.float() - self.mean) / self.std
        return self.pool(self.feature_map(self.backbone.forward_features(x)))

    def embedding(self, x):
        """What stages 5 and 7 hand to the head: the pooled features, followed by the logits of
        ``forward(x, with_exam=True)`` when the CNN was built with ``logits_in_embedding`` (call
        in eval mode)."""
        f = self.features(x)
        if not self.logits_in_embedding:
            return f
        return torch.cat([f, self.head(f).float(), self.exam_head(f).float()], dim=1)

    def forward(self, x, with_exam=False):
        """(B,3,H,W) RGB 0-255 -> (B,) logits of pe_present_on_image; ``with_exam``: (B, 1 + K),
        the image logit then the exam labels' (training calls this through the module, so
        DDP and torch.compile see it)."""
        h = self.drop(self.features(x))
        image = self.head(h)
        if not with_exam:
            return image.squeeze(-1)
        return torch.cat([image, self.exam_head(h)], dim=1) if self.exam_labels else image


def _no_weights_error(name, err):
    return PipelineError(
        f"cannot download {name} pretrained weights (no network? {type(err).__name__}); set "
        f"model.pretrained_file=PATH to a local weights file or model.pretrained=false")


def load_backbone_file(backbone, path):
    """Load a local weights file into the timm backbone.

    Accepts a timm/hub state dict (.pth/.bin/.safetensors, classifier keys ignored) or one of
    our checkpoints (its ``backbone.*`` weights).
    """
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"model.pretrained_file not found: {path}")
    try:
        sd = timm.models.load_state_dict(str(path), use_ema=False, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise PipelineError(f"cannot read weights from {path}: {type(e).__name__}: {e}") from None
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    own = backbone.state_dict()
    missing = [k for k in own if k not in sd]
    bad = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or bad:
        what = f"{len(missing)} missing keys (e.g. {missing[0]})" if missing else \
            f"{len(bad)} keys of another shape (e.g. {bad[0]})"
        raise PipelineError(f"{path} does not fit backbone {type(backbone).__name__}: {what}")
    backbone.load_state_dict({k: sd[k] for k in own}, strict=True)
    log.info("loaded backbone weights from %s", path)


# A timm architecture name, or one with its pretrained tag (``rexnet_200.nav_in1k``).
_TIMM_NAME = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)?")


def offline_backbone(name, where):
    """``name`` if timm builds it from its own code alone: an architecture of
    ``timm.list_models()``, optionally with a pretrained tag (built without pretrained weights,
    the tag only picks timm's built-in defaults). Hub (``hf-hub:``, ``timm/``) and local-folder
    (``local-dir:``) names, which make timm fetch or read a config first, are refused: a model
    rebuilt from given weights (a bundle) must never reach the network or the disk."""
    if not (isinstance(name, str) and _TIMM_NAME.fullmatch(name) and name.split(".")[0] in timm.list_models()):
        raise PipelineError(f"{where}: backbone {name!r:.80} is not a timm architecture name "
                            "(hub, path and folder names are refused: the model must build offline)")
    return name


def build_cnn(mcfg):
    """Build the CNN from ``cfg['model']``; pretrained weights from the hub or a local file."""
    name = mcfg["backbone"]
    kw = dict(num_classes=0, global_pool="")
    file = mcfg.get("pretrained_file") or ""
    if mcfg.get("pretrained") and not file:
        try:
            backbone = timm.create_model(name, pretrained=True, **kw)
        except Exception as e:  # noqa: BLE001 - offline hub errors come in many types
            raise _no_weights_error(name, e) from None
    else:
        try:
            backbone = timm.create_model(name, pretrained=False, **kw)
        except RuntimeError as e:
            raise PipelineError(f"unknown model.backbone '{name}': {e}") from None
        if file:
            load_backbone_file(backbone, file)
    pool_params = {"p": mcfg.get("gem_p", 3.0), "eps": mcfg.get("gem_eps", 1e-6)} \
        if mcfg.get("pool", "gem") == "gem" else {}
    return RSNACNN(backbone, pool=mcfg.get("pool", "gem"), pool_params=pool_params,
                   dropout=mcfg.get("dropout", 0.5), hidden=mcfg.get("hidden", 256),
                   mean=mcfg.get("mean"), std=mcfg.get("std"),
                   exam_labels=exam_targets.target_labels(mcfg),
                   logits_in_embedding=exam_targets.in_embedding(mcfg))
