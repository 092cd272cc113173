"""Records of training runs (stages 3 and 6), embedding dumps (stage 5) and submissions (stage 7).

They extend the chain of rsna_pe.provenance: a ``record.json`` beside the outputs whose params
hold what decides them and whose inputs reference the records they were made from; every
checkpoint carries its run's record too. Records name the order of the labels their outputs
stand for (a CNN: ``pe_present_on_image``, then any exam labels it also learns per slice; a
head and a dump: LABELS): a checkpoint, dump or
head made with another order is refused, never read by position.
"""
import copy
import hashlib
import os
from pathlib import Path

import torch

from . import exam_targets, provenance, runtime
from . import labels as L  # read as L.LABELS at call time: the order is the code's, not an import's
from .errors import PipelineError
from .model_input import DEFAULT_INPUT, input_kind

# Config keys that change how fast a run goes or where files are, not what it learns: changing
# them keeps a run. Inputs are recorded by reference to their records instead of by path (so
# jpeg_crop, which picks the input sets, is decided by their records).
_NOT_DECISIVE = ("config_file", "run_name", "output_dir", "wandb", "overwrite", "extra_state", "jpeg_crop")
_NOT_DECISIVE_IN = {"train": ("num_workers", "val_batch_size", "log_every", "device", "compile",
                              "channels_last"),
                    "dataset": ("data_dir", "dump_root")}
# Settings added after runs were first recorded: at their default they stay out of the record,
# so a run made before them keeps its record (and resumes instead of stopping).
_LATER_DEFAULTS = {"dataset": {"input": DEFAULT_INPUT}}
RETRAIN = "retrain it (train_rsna.py with overwrite=true)"
MADE_BY = {"jpegs": "make_image.py", "fold_csv": "make_csv.py", "npz": "make_npz.py",
           "dump": "dump_embeddings.py"}


# ----------------------------------------------------------------------------- label order
def _first_difference(recorded, expected):
    for i, (a, b) in enumerate(zip(recorded, expected)):
        if a != b:
            return f"'{a}' at position {i} where this code has '{b}'"
    return f"{len(recorded)} labels where this code has {len(expected)}"


def check_labels(recorded, expected, where, remedy):
    """Refuse outputs whose recorded label order is missing or differs from ``expected``."""
    if recorded is None:
        raise PipelineError(f"{where}: no recorded label order (made by an older version); {remedy}")
    if list(recorded) != list(expected):
        raise PipelineError(f"{where}: made with another label order ({_first_difference(list(recorded), list(expected))}); "
                            f"its outputs are not read by position: {remedy}")


def output_labels(cfg):
    """The labels a network's outputs stand for, in order, as this code defines them."""
    from .tasks import task_class
    return list(task_class(cfg).output_labels(cfg))


def check_checkpoint(ckpt, path):
    """A checkpoint is read only if it records the label order this code gives its outputs."""
    recorded = ((ckpt.get("record") or {}).get("params") or {}).get("labels")
    check_labels(recorded, output_labels(ckpt["config"]), path, RETRAIN)


# ----------------------------------------------------------------------------- records
def decisive_config(cfg):
    """The part of a training config that decides what the run learns."""
    out = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in _NOT_DECISIVE}
    for block, keys in _NOT_DECISIVE_IN.items():
        if isinstance(out.get(block), dict):
            out[block] = {k: v for k, v in out[block].items() if k not in keys}
    for block, defaults in _LATER_DEFAULTS.items():
        if isinstance(out.get(block), dict):
            out[block] = {k: v for k, v in out[block].items() if defaults.get(k, object()) != v}
    model = out.get("model")
    if isinstance(model, dict) and not (model.get("exam_targets") or {}).get("labels"):
        model.pop("exam_targets", None)  # off: recorded as runs made before the option were
    elif isinstance(model, dict):  # the model's own label order: a reordered list is the same run
        model["exam_targets"]["labels"] = list(exam_targets.target_labels(model))
    return out


def input_records(sets, from_dir):
    """({name: ref}, {name: params}) of the input sets' records ({name: folder}); an input that
    records a label order must have this code's LABELS."""
    refs, params = {}, {}
    for name, where in sets.items():
        if not Path(where).is_dir():
            raise PipelineError(f"{where}: not found (run {MADE_BY.get(name, 'the stage that makes it')} first)")
        rec = provenance.require(where, name)
        if "labels" in rec["params"]:
            check_labels(rec["params"]["labels"], L.LABELS, provenance.record_path(where),
                         "remake it with overwrite=true")
        refs[name] = provenance.ref(where, from_dir)
        params[name] = rec["params"]
    return refs, params


def run_record(cfg, run_dir):
    """A training run's record: decisive config, output label order, inputs (and their params:
    a CNN's JPEG settings, which inference reproduces; a head's dumped checkpoint hash, which
    inference checks against the CNN it is paired with)."""
    from .tasks import task_class
    refs, params = input_records(task_class(cfg).input_sets(cfg), run_dir)
    return provenance.make(f"train_{cfg['network']}", {
        "config": decisive_config(cfg), "labels": output_labels(cfg), "input_params": params}, refs)


def has_outputs(folder, names=None):
    """Any finished output in ``folder`` (``names``: only those count); temporaries of a killed
    write (``.<name>.*.tmp``) do not."""
    folder = Path(folder)
    if names is not None:
        return any((folder / n).exists() for n in names)
    return folder.is_dir() and any(not p.name.startswith(".") for p in folder.iterdir())


def on_main(d, fn):
    """``fn()`` on rank 0 only; every rank gets its result, or raises its error (no rank is
    left waiting for one that stopped)."""
    result = error = None
    if d.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    result, message = runtime.broadcast_object((result, None if error is None else str(error)), d)
    if error is not None:
        raise error
    if message is not None:
        raise PipelineError(message)
    return result


def guard_run(cfg, run_dir, d):
    """The rerun rule for a training run (stage 3 or 6); returns its record. A finished or
    partial run made from other inputs or settings stops; ``overwrite=true`` starts afresh."""
    def decide():
        record = run_record(cfg, run_dir)
        provenance.guard(run_dir, record, has_outputs(run_dir), cfg.get("overwrite", False),
                         "training run")
        return record
    return on_main(d, decide)


_HASHES = {}


def checkpoint_sha256(path):
    """provenance.file_sha256, once per file version in this process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASHES:
        _HASHES[key] = provenance.file_sha256(path)
    return _HASHES[key]


def dump_record(ckpt_path, ckpt, npz_root, out_dir):
    """Stage 5: the checkpoint's content hash and input size (and kind, other than the recipe's
    windows), the label order of ``labels``, the npz set as input; with
    ``exam_targets.in_embedding`` also ``logits``, what the embedding's last dims stand for."""
    refs, _ = input_records({"npz": npz_root}, out_dir)
    trained_on = (ckpt["record"].get("inputs") or {}).get("jpegs", {}).get("digest")
    packed_from = (provenance.load(npz_root)["inputs"] or {}).get("jpegs", {}).get("digest")
    if trained_on and packed_from and trained_on != packed_from:
        raise PipelineError(f"{ckpt_path}: trained on another JPEG set than {npz_root} was packed "
                            "from; retrain the CNN or remake the npz set")
    kind, logits = input_kind(ckpt["config"]), exam_targets.in_embedding(ckpt["config"].get("model"))
    rec = provenance.make("dump_embeddings", {
        "checkpoint_sha256": checkpoint_sha256(ckpt_path),
        "input_size": int(ckpt["config"]["dataset"]["size"]), "labels": list(L.LABELS),
        **({} if kind == DEFAULT_INPUT else {"input": kind}),
        **({"logits": output_labels(ckpt["config"])} if logits else {})}, refs)
    rec["info"]["checkpoint"] = str(ckpt_path)
    return rec


# Settings of stage 7 that change its predictions (besides the checkpoints and the ids).
SUBMISSION_SETTINGS = ("split", "tta_flip", "amp")


def submission_record(cfg, sources, ids_csv):
    """Stage 7: every pair's model hashes (checkpoint files, or a bundle's weights files), the
    id list's hash, the deciding settings."""
    rec = provenance.make("inference", {
        **{k: cfg[k] for k in SUBMISSION_SETTINGS},
        "ids_sha256": provenance.file_sha256(ids_csv),
        "pairs": [{"cnn": s["cnn"], "rnn": s["rnn"]} for s in sources]})
    rec["info"]["checkpoints"] = [s["where"] for s in sources]
    return rec


# ----------------------------------------------------------------------------- pairs
def check_pair(cnn_path, cnn, rnn_path, rnn):
    """A CNN and an LSTM head belong together: same fold, the head's CNN run, and embeddings
    dumped from this very CNN checkpoint file."""
    ccfg, rcfg = cnn["config"], rnn["config"]
    if (ccfg.get("network"), rcfg.get("network")) != ("cnn", "rnn"):
        raise PipelineError(f"pair ({cnn_path}, {rnn_path}): want a CNN and an LSTM head checkpoint, "
                            f"got {ccfg.get('network')} and {rcfg.get('network')}")
    want = rcfg["dataset"].get("cnn_run")
    if want != ccfg["run_name"]:
        raise PipelineError(f"{rnn_path}: LSTM head trained on embeddings of CNN run '{want}', "
                            f"paired with CNN run '{ccfg['run_name']}' ({cnn_path})")
    if rcfg["dataset"]["fold"] != ccfg["dataset"]["fold"]:
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
    from .images import conversion_params
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


def weights_digest(named_tensors):
    """Short sha256 of named tensors (e.g. ``model.named_parameters()``), to compare ranks."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]
