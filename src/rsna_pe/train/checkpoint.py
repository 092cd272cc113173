"""Find and rebuild trained models from their run folders.

A checkpoint holds its own config, so ``load_trained(path)`` rebuilds the network (backbone,
pooling, input normalisation) exactly as it was trained (rsna_pe.models.networks). Every checkpoint
loads with ``torch.load(path, weights_only=True)`` and carries its run's record
(rsna_pe.train.run_records): versions, commit, inputs and the label order of its outputs.
"""
import math
from pathlib import Path

import torch

from ..core import paths
from ..core.errors import PipelineError
from ..core.io import atomic_torch_save
from ..models.networks import build_network, output_labels, without_pretrained
from ..records.provenance import check_label_order
from .run_records import RETRAIN

WHICH = ("best", "last")


def find_checkpoint(output_root, run_name, fold, which="best"):
    """``<output_root>/<run_name>/fold_<k>/<which>.ckpt``; ``which`` may also be a file name
    inside the run folder (e.g. a top-k ``epoch01-step0001234.ckpt``)."""
    run = paths.run_dir(output_root, run_name, fold)
    name = f"{which}.ckpt" if which in WHICH else which
    path = run / name
    if not path.is_file():
        raise PipelineError(f"no checkpoint {path} (train {run_name} fold {fold} first)")
    return path


def read_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise PipelineError(f"cannot read checkpoint {path}: {type(e).__name__}") from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise PipelineError(f"{path} is not a checkpoint of this pipeline (no config/model)")
    return ckpt


def check_checkpoint(ckpt, path):
    """A checkpoint is read only if it records the label order this code gives its outputs."""
    recorded = ((ckpt.get("record") or {}).get("params") or {}).get("labels")
    check_label_order(recorded, output_labels(ckpt["config"]), path, RETRAIN)


def load_trained(path, device="cpu"):
    """-> (model in eval mode on ``device``, the checkpoint). A checkpoint whose recorded label
    order is not this code's (or that records none) is refused."""
    ckpt = read_checkpoint(path)
    check_checkpoint(ckpt, path)
    model = build_network(without_pretrained(ckpt["config"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise PipelineError(f"{path}: weights do not fit the model its config describes "
                            f"({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), ckpt


def state_dict(model):
    """Weights as CPU tensors (a checkpoint loads anywhere, with weights_only=True)."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


class CheckpointKeeper:
    """A run's checkpoints (written by rank 0, each atomically): the ``top_k`` by val_loss
    (``epochEE-stepSSSSSSS.ckpt``), ``best.ckpt`` and ``last.ckpt``, which also holds what a
    resumed run needs, this keeper's own list and best loss included."""

    def __init__(self, run_dir, top_k=3):
        self.run, self.k = Path(run_dir), top_k
        self.top = []  # [(val_loss, file name)], best first
        self.best_loss = math.inf

    def load_last(self):
        """The state in ``last.ckpt``, or None before the first validation."""
        path = self.run / "last.ckpt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise PipelineError(f"cannot read {path}: {type(e).__name__}; delete it to restart") from None

    def restore(self, state):
        self.top = [tuple(x) for x in state["top_k"]]
        self.best_loss = state["best_loss"]

    def save(self, val_loss, name, weights, resume_state):
        """After a validation: ``weights`` (a dict) to the top-k and best files when it earns a
        place, then ``resume_state()`` plus this keeper's state to last.ckpt."""
        if self.k > 0 and math.isfinite(val_loss):
            if len(self.top) < self.k or val_loss < max(x[0] for x in self.top):
                atomic_torch_save(weights, self.run / name)
                self.top.append((val_loss, name))
                self.top.sort()
                for _, old in self.top[self.k:]:
                    (self.run / old).unlink(missing_ok=True)
                self.top = self.top[:self.k]
        if math.isfinite(val_loss) and val_loss < self.best_loss:
            self.best_loss = val_loss
            atomic_torch_save(weights, self.run / "best.ckpt")
        atomic_torch_save(dict(resume_state(), top_k=[list(x) for x in self.top], best_loss=self.best_loss),
                          self.run / "last.ckpt")

    def best(self):
        path = self.run / "best.ckpt"
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    def mark_finished(self):
        last = self.load_last()
        last["finished"] = True
        atomic_torch_save(last, self.run / "last.ckpt")
