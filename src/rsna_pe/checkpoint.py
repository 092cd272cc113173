"""Find and rebuild trained models from their run folders.

A checkpoint holds its own config, so ``load_model(path)`` rebuilds the network (backbone,
pooling, input normalisation) exactly as it was trained, through the Task registry. Every
checkpoint loads with ``torch.load(path, weights_only=True)`` and carries its run's record
(rsna_pe.runs): versions, commit, inputs and the label order of its outputs.
"""
from pathlib import Path

import torch

from . import paths
from .errors import PipelineError

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


def load(path, device="cpu"):
    """-> (model in eval mode on ``device``, the checkpoint). A checkpoint whose recorded label
    order is not this code's (or that records none) is refused."""
    from .runs import check_checkpoint
    from .trainer import get_task, without_pretrained

    ckpt = read_checkpoint(path)
    check_checkpoint(ckpt, path)
    model = get_task(without_pretrained(ckpt["config"])).build_model()
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def load_model(path, device="cpu"):
    """-> (model in eval mode on ``device``, the checkpoint's config)."""
    model, ckpt = load(path, device)
    return model, ckpt["config"]

