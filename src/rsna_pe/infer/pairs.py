"""The CNN/head pairs of an ensemble: which checkpoints, whether a head belongs to its CNN, the
JPEG settings a CNN was trained on (which inference reproduces) and the heads' label prior.

Stage 7, predict_study and export_models pick their pairs here; the check that a head belongs
to its CNN (same CNN run, same fold) is this module's ``head_mismatch``, wherever a pair comes
from (run folders or a model bundle). Nothing here needs torch at import: a bundle's ONNX models
are paired and checked here too (rsna_pe.infer.onnx_runtime).
"""
import json
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, PipelineError
from ..core.paths import PRIOR_FILE
from ..data.images import conversion_params
from ..records.provenance import checkpoint_sha256

# rsna_pe.train.run_records.RETRAIN, spelled out here: that module imports the networks (torch).
RETRAIN = "retrain it (train_rsna.py with overwrite=true)"


def resolve_pairs(cfg):
    """[(cnn_ckpt, rnn_ckpt)] from ``checkpoints`` if given, else run names x folds."""
    from ..train.checkpoint import find_checkpoint  # torch: run folders are the torch runtime's

    if cfg["checkpoints"]:
        pairs = [(Path(p["cnn"]), Path(p["rnn"])) for p in _pair_items(cfg, "checkpoints")]
        for path in (p for pair in pairs for p in pair):
            if not path.is_file():
                raise PipelineError(f"{path}: checkpoint not found")
        return pairs
    folds = cfg["folds"]
    if not all(type(k) is int for k in folds):  # bool is an int to Python, not a fold
        raise ConfigError(f"config {cfg.get('config_file')}: key 'folds' must list fold numbers, "
                          f"not {folds!r:.80}")
    return [(find_checkpoint(cfg["cnn_output"], m["cnn"], k), find_checkpoint(cfg["rnn_output"], m["rnn"], k))
            for m in _pair_items(cfg, "models") for k in folds]


def _pair_items(cfg, key):
    """``cfg[key]``, checked to be a list of {cnn: str, rnn: str} (run names or paths)."""
    items = cfg[key]
    ok = isinstance(items, list) and items and all(
        isinstance(p, dict) and all(isinstance(p.get(k), str) and p[k] for k in ("cnn", "rnn")) for p in items)
    if not ok:
        raise ConfigError(f"config {cfg.get('config_file')}: key '{key}' must be a non-empty list of "
                          f"{{cnn: ..., rnn: ...}}, not {items!r:.80}")
    return items


def head_mismatch(cnn_cfg, head_cfg):
    """Why a head does not belong to a CNN, from their training configs: ``"run"`` (it was
    trained on embeddings of another CNN run), ``"fold"`` (another fold), or None."""
    if head_cfg["dataset"].get("cnn_run") != cnn_cfg.get("run_name"):
        return "run"
    if head_cfg["dataset"].get("fold") != cnn_cfg["dataset"].get("fold"):
        return "fold"
    return None


def check_pair(cnn_path, cnn, rnn_path, rnn):
    """A CNN and an LSTM head checkpoint belong together: same fold, the head's CNN run, and
    embeddings dumped from this very CNN checkpoint file."""
    ccfg, rcfg = cnn["config"], rnn["config"]
    if (ccfg.get("network"), rcfg.get("network")) != ("cnn", "rnn"):
        raise PipelineError(f"pair ({cnn_path}, {rnn_path}): want a CNN and an LSTM head checkpoint, "
                            f"got {ccfg.get('network')} and {rcfg.get('network')}")
    mismatch = head_mismatch(ccfg, rcfg)
    if mismatch == "run":
        raise PipelineError(f"{rnn_path}: LSTM head trained on embeddings of CNN run "
                            f"'{rcfg['dataset'].get('cnn_run')}', paired with CNN run '{ccfg['run_name']}' "
                            f"({cnn_path})")
    if mismatch == "fold":
        raise PipelineError(f"{rnn_path}: LSTM head of fold {rcfg['dataset']['fold']} paired with "
                            f"a CNN of fold {ccfg['dataset']['fold']} ({cnn_path})")
    dumped = rnn["record"]["params"]["input_params"].get("dump", {}).get("checkpoint_sha256")
    if dumped and dumped != checkpoint_sha256(cnn_path):
        raise PipelineError(f"{rnn_path}: LSTM head trained on embeddings of another checkpoint than "
                            f"{cnn_path} (changed since); redo its dump and head with overwrite=true")


def jpeg_settings(cnn, path):
    """(jpeg_size, quality, lung crop margin or None) of the JPEG set a CNN was trained on, which
    inference reproduces; a set made with windows, a conversion or a crop this code does not
    make is refused."""
    got = cnn["record"]["params"]["input_params"].get("jpegs")
    if not got:
        raise PipelineError(f"{path}: no record of the JPEG set it was trained on; {RETRAIN}")
    margin = (got.get("crop") or {}).get("margin")
    want = conversion_params(got["jpeg_size"], got["quality"], margin)
    for k in want:
        if got.get(k) != want[k]:
            raise PipelineError(f"{path}: trained on JPEGs made with {k}={got.get(k)}, this code "
                                f"makes {want[k]}; inference cannot reproduce its input: {RETRAIN}")
    return int(got["jpeg_size"]), int(got["quality"]), margin


def run_prior(rnn_ckpt):
    """The label prior saved with an RNN run (training means of the 10 labels)."""
    path = Path(rnn_ckpt).parent / PRIOR_FILE
    if not path.is_file():
        raise PipelineError(f"{path}: label prior of the RNN run not found")
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise PipelineError(f"{path}: not a readable label prior ({type(e).__name__})") from None


def mean_prior(priors):
    """The labels' mean over the heads' priors: what an ensemble falls back on."""
    return {k: float(np.mean([p[k] for p in priors])) for k in priors[0]}
