"""Stage 3's training task: the slice CNN (rsna_pe.models.cnn) on the JPEG set of one fold split,
plugged into the shared engine (rsna_pe.train.engine): datasets, one step, validation metrics."""
import torch
from sklearn.metrics import roc_auc_score

from ..core import paths
from ..core.errors import PipelineError
from ..core.labels import IMAGE_LABEL
from ..data.folds import read_fold_csv, split_by_fold
from ..data.model_input import input_kind
from ..data.slice_data import build_train_transform, slice_dataset
from ..models import exam_targets
from ..models.losses import build_loss
from .tasks import Task


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
    def input_sets(cfg):
        """Folders of the records a run is made from: the JPEG set and the fold csv."""
        data = cfg["dataset"]["data_dir"]
        return {"jpegs": paths.jpeg_dir(data, cfg["jpeg_size"], crop=paths.crop_of(cfg)),
                "fold_csv": paths.fold_csv(data, cfg["jpeg_size"], crop=paths.crop_of(cfg)).parent}

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
        return (slice_dataset(train_df, root, size, transform, kind, self._exam(train_df)),
                slice_dataset(val_df, root, size, None, kind, self._exam(val_df)))

    def _exam(self, df):
        """The exam targets of the rows of ``df`` (rsna_pe.models.exam_targets), None when off."""
        names = self.exam_labels
        if not names:
            return None
        return (*exam_targets.slice_targets(df, names), exam_targets.flip_order(names))

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
