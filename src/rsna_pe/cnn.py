"""Stage 3: the slice-level CNN (timm backbone + GeM + MLP head), its data and its Task.

The network takes 3 channels (the lung, PE, mediastinal windows of a slice, or with
``dataset.input: neighbours`` the PE window of slices z-1, z, z+1: rsna_pe.model_input) in the
0-255 range, uint8 or float, and normalises inside ``forward`` with the backbone's pretrained
mean/std, so later stages feed it the JPEGs'/npz's pixels as they are. ``embedding(x)`` is what
stages 5 and 7 hand to the head: the pooled features (2560 for rexnet_200), followed by the
CNN's own logits with ``model.exam_targets.in_embedding``.
"""
import logging
import re
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn

from . import exam_targets, labels, paths
from .errors import PipelineError
from .folds import read_fold_csv, split_by_fold
from .images import jpeg_name, read_jpeg
from .labels import IMAGE_LABEL
from .losses import build_loss
from .model_input import DEFAULT_INPUT, NEIGHBOURS, input_kind, neighbour_stack, resize_slice
from .tasks import Task

log = logging.getLogger(__name__)

# Augmentation sizes in the recipe are pixels at this image size; they scale with the size.
REFERENCE_SIZE = 512


# ----------------------------------------------------------------------------- model
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

    With ``exam_labels`` (rsna_pe.exam_targets) a second head of the same shape on the same
    features gives one logit per exam label, trained per slice so the features carry them.
    """

    def __init__(self, backbone, pool="gem", pool_params=None, dropout=0.5, hidden=256,
                 mean=None, std=None, exam_labels=(), logits_in_embedding=False):
        super().__init__()
        self.backbone = backbone
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
        return self.pool(self.backbone.forward_features(x))

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
    import timm.models

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
    import timm

    if not (isinstance(name, str) and _TIMM_NAME.fullmatch(name) and name.split(".")[0] in timm.list_models()):
        raise PipelineError(f"{where}: backbone {name!r:.80} is not a timm architecture name "
                            "(hub, path and folder names are refused: the model must build offline)")
    return name


def build_cnn(mcfg):
    """Build the CNN from ``cfg['model']``; pretrained weights from the hub or a local file."""
    import timm

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


# ----------------------------------------------------------------------------- data
def jpeg_path(root, study, series, z, sop):
    """``<root>/<study>/<series>/<zzzz>_<SOP>.jpg`` (docs/layout.md)."""
    return str(paths.series_dir(root, study, series) / jpeg_name(int(z), sop))


def load_slice(path, size):
    """RGB uint8 (size, size, 3): the stage-1 JPEG resized by rsna_pe.model_input, the one
    resize that stages 5 and 7 use too."""
    return resize_slice(read_jpeg(path), size)


def load_neighbours(paths, size):
    """RGB uint8 (size, size, 3): the neighbour input of the middle one of three z-consecutive
    stage-1 JPEGs (z-1, z, z+1; an edge slice's own file stands in for its missing neighbour),
    stacked by rsna_pe.model_input as stages 5 and 7 stack it, then resized."""
    imgs = np.stack([read_jpeg(p).transpose(2, 0, 1) for p in paths])
    return resize_slice(np.ascontiguousarray(neighbour_stack(imgs)[1].transpose(1, 2, 0)), size)


def neighbour_rows(df):
    """int64 (N, 2): the row positions of each row's previous and next slice in its series
    (by ``z_pos_order``); an edge slice is its own neighbour."""
    n = len(df)
    out = np.zeros((n, 2), np.int64)
    if not n:
        return out
    series = df.groupby(["StudyInstanceUID", "SeriesInstanceUID"], sort=False).ngroup().to_numpy()
    order = np.lexsort((df["z_pos_order"].to_numpy(), series))  # by series, then z
    same = series[order][1:] == series[order][:-1]  # sorted row k and k+1 share a series
    out[order, 0] = np.where(np.r_[False, same], np.r_[order[:1], order[:-1]], order)
    out[order, 1] = np.where(np.r_[same, False], np.r_[order[1:], order[-1:]], order)
    return out


def build_train_transform(acfg, size, record_flips=False):
    """The original's train augmentation (docs/training.md), pixel sizes scaled to ``size``;
    ``record_flips``: each result names the transforms it applied (a flip swaps side targets)."""
    import albumentations as A

    s = size / REFERENCE_SIZE
    px = lambda v: max(1, int(round(v * s)))  # noqa: E731
    ssr, drop = acfg["shift_scale_rotate"], acfg["dropout"]
    shift, scale, rot = ssr["shift"], ssr["scale"], ssr["rotate"]
    lo, hi = (px(v) for v in drop["coarse_size"])
    ulo, uhi = (max(2, px(v)) for v in drop["grid_unit"])
    return A.Compose([
        A.HorizontalFlip(p=acfg["hflip"]),
        # ShiftScaleRotate of albumentations 1.x, written as the Affine it now is; keep_ratio:
        # one scale for x and y, as ShiftScaleRotate drew it.
        A.Affine(translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                 scale=(1 - scale, 1 + scale), keep_ratio=True, rotate=(-rot, rot), shear=(0, 0),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101, p=ssr["p"]),
        A.OneOf([
            A.CoarseDropout(num_holes_range=(drop["coarse_holes"], drop["coarse_holes"]),
                            hole_height_range=(lo, hi), hole_width_range=(lo, hi), fill=0),
            A.GridDropout(ratio=drop["grid_ratio"], unit_size_range=(ulo, min(uhi, size)),
                          random_offset=True, fill=0),
        ], p=drop["p"]),
    ], save_applied_params=record_flips)


class SliceDataset(torch.utils.data.Dataset):
    """One JPEG slice -> (uint8 HWC tensor, float label); with ``neighbours`` (int (N, 2), the
    rows of each slice's z-1 and z+1, see neighbour_rows) its neighbour input instead.

    Images stay uint8 and channel-last until the GPU: a stacked (B,H,W,3) batch permuted to
    (B,3,H,W) is already channels_last in memory, and 4x fewer bytes cross the bus than float.
    The image is resized before augmenting (cheaper when training below the stored size; the
    augmentation's pixel sizes are scaled to the training size).
    """

    def __init__(self, files, labels, size, transform=None, neighbours=None, weights=None,
                 flip_order=None):
        # One numpy array, not a list of str: workers then share it without copy-on-access.
        self.files = np.asarray([str(f).encode() for f in files])
        self.labels = np.asarray(labels, dtype=np.float32)
        self.size = size
        self.transform = transform
        self.neighbours = None if neighbours is None else np.asarray(neighbours, np.int64)
        # Exam targets (rsna_pe.exam_targets): labels (N, 1+K), their weights (N, K), and the
        # target order of a flipped image; items are then (image, labels, weights).
        self.weights = weights
        self.flip_order = flip_order

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        if self.neighbours is None:
            img = load_slice(self.files[i].decode(), self.size)
        else:
            prev, nxt = self.neighbours[i]
            img = load_neighbours([self.files[k].decode() for k in (prev, i, nxt)], self.size)
        y = self.labels[i]
        if self.transform is not None:
            out = self.transform(image=img)
            img = out["image"]
            if self.flip_order is not None and any(name == "HorizontalFlip" for name, _ in
                                                   out["applied_transforms"]):
                y = y[self.flip_order]
        img = torch.from_numpy(np.ascontiguousarray(img))
        if self.weights is None:
            return img, torch.tensor(y)
        return img, torch.from_numpy(y.copy()), torch.from_numpy(self.weights[i])

    def worker_init(self, seed):
        """Called in each loader worker: one thread per worker (16 workers x N cv2/torch
        threads would oversubscribe the cores) and a per-worker augmentation stream."""
        cv2.setNumThreads(0)
        torch.set_num_threads(1)
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)


def slice_dataset(df, root, size, transform=None, kind=DEFAULT_INPUT, exam_labels=()):
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"JPEG folder not found: {root} (run src/make_image.py first)")
    series = df[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates()
    for st, se in series.itertuples(index=False):
        if not (root / st / se).is_dir():
            raise PipelineError(f"no JPEGs for series {root / st / se}")
    files = [jpeg_path(root, st, se, z, sop) for st, se, z, sop in
             df[["StudyInstanceUID", "SeriesInstanceUID", "z_pos_order", "SOPInstanceUID"]]
             .itertuples(index=False)]
    image = df[IMAGE_LABEL].to_numpy(np.float32)
    neighbours = neighbour_rows(df) if kind == NEIGHBOURS else None
    if not exam_labels:
        return SliceDataset(files, image, size, transform, neighbours)
    y, w = exam_targets.slice_targets(df, exam_labels)
    return SliceDataset(files, np.column_stack([image, y]), size, transform, neighbours, w,
                        exam_targets.flip_order(exam_labels))


# ----------------------------------------------------------------------------- task
class CNNTask(Task):
    """Slice classifier on ``pe_present_on_image`` (and optionally exam labels per slice)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.loss_fn = build_loss(cfg["loss"])
        self.channels_last = cfg.get("train", {}).get("channels_last", True)
        self.exam_labels = exam_targets.target_labels(cfg["model"])
        self.exam_weight = exam_targets.loss_weight(cfg["model"])

    @staticmethod
    def resolve_config(cfg):
        """The network input size defaults to the experiment's JPEG size."""
        if not cfg["dataset"].get("size"):
            cfg["dataset"]["size"] = int(cfg["jpeg_size"])
        input_kind(cfg)  # an unknown input kind stops before anything is written
        return cfg

    @staticmethod
    def output_labels(cfg):
        """The image logit, then the exam labels of ``model.exam_targets`` (the order of the
        logits that ``in_embedding`` appends to the embedding)."""
        return [labels.IMAGE_LABEL, *exam_targets.target_labels(cfg.get("model"))]

    @staticmethod
    def input_sets(cfg):
        """Folders of the records a run is made from: the JPEG set and the fold csv."""
        data = cfg["dataset"]["data_dir"]
        return {"jpegs": paths.jpeg_dir(data, cfg["jpeg_size"], crop=paths.crop_of(cfg)),
                "fold_csv": paths.fold_csv(data, cfg["jpeg_size"], crop=paths.crop_of(cfg)).parent}

    def build_model(self):
        return build_cnn(self.cfg["model"])

    def datasets(self):
        dcfg = self.cfg["dataset"]
        src, size, crop = self.cfg["jpeg_size"], dcfg["size"], paths.crop_of(self.cfg)
        names = self.exam_labels
        df = read_fold_csv(paths.fold_csv(dcfg["data_dir"], src, crop=crop),
                           exam_targets.columns(names) if names else [IMAGE_LABEL])
        train_df, val_df = split_by_fold(df, dcfg["fold"], dcfg["k_fold"])
        if len(train_df) == 0 or len(val_df) == 0:
            raise PipelineError(f"fold {dcfg['fold']} leaves an empty train or val set in "
                                f"{paths.fold_csv(dcfg['data_dir'], src, crop=crop)}")
        root = paths.jpeg_dir(dcfg["data_dir"], src, crop=crop)
        aug = self.cfg.get("augment")
        transform = build_train_transform(aug, size, bool(names)) \
            if aug and aug.get("enabled", True) else None
        if transform is not None:
            # Seeded from torch so a seeded run augments the same way without loader workers.
            transform.set_random_seed(int(torch.randint(2**31 - 1, ())))
        kind = input_kind(self.cfg)
        return (slice_dataset(train_df, root, size, transform, kind, names),
                slice_dataset(val_df, root, size, None, kind, names))

    def step(self, model, batch, device):
        x, y = batch[:2]
        # (B,H,W,3) uint8 -> (B,3,H,W) view whose memory is channels_last; the model
        # converts to float and normalises on the device.
        x = x.to(device, non_blocking=True).permute(0, 3, 1, 2)
        if not self.channels_last:
            x = x.contiguous()
        y = y.to(device, non_blocking=True)
        if self.exam_labels:
            return self._exam_step(model, x, y, batch[2].to(device, non_blocking=True))
        logits = model(x)
        loss = self.loss_fn(logits.float(), y)
        if model.training:
            return loss, {}  # no device->host copy (a sync) on training steps
        return loss, {"logits": logits.detach().float().cpu(), "labels": y.cpu()}

    def _exam_step(self, model, x, y, w):
        logits = model(x, with_exam=True).float()
        loss = self.loss_fn(logits[:, 0], y[:, 0]) + \
            self.exam_weight * exam_targets.exam_loss(logits[:, 1:], y[:, 1:], w)
        if model.training:
            return loss, {}
        return loss, {"logits": logits.detach().cpu(), "labels": y.cpu(), "weights": w.cpu()}

    def val_metrics(self, outs):
        from sklearn.metrics import roc_auc_score

        logits = torch.cat([o["logits"] for o in outs])
        labels = torch.cat([o["labels"] for o in outs])
        extra = {}
        if self.exam_labels:
            extra = exam_targets.exam_metrics(self.loss_fn, logits, labels,
                                              torch.cat([o["weights"] for o in outs]),
                                              self.exam_labels, self.exam_weight)
            logits, labels = logits[:, 0], labels[:, 0]
        loss = float(self.loss_fn(logits, labels))
        acc = float(((logits > 0).float() == labels).float().mean())
        y = labels.numpy()
        auc = float(roc_auc_score(y, logits.numpy())) if 0 < y.sum() < len(y) else float("nan")
        return {"val_loss": loss, "val_acc": acc, "val_auc": auc, **extra}
