"""Records of the stages that run trained models: embedding dumps (stage 5) and submissions
(stage 7), in the chain of rsna_pe.records.provenance.

A dump records the checkpoint's content hash and the label order of the labels it stores; a
submission every pair's model hashes, the id list's hash and the settings that change its
predictions. Their rerun rule is rsna_pe.records.provenance.guard. The networks (torch) are
imported by the dump's record only: stage 7 with ONNX Runtime runs without torch.
"""
from ..core import labels as L
from ..core.errors import PipelineError
from ..data.model_input import DEFAULT_INPUT, input_kind
from ..records import provenance
from ..records.provenance import checkpoint_sha256

# Settings of stage 7 that change its predictions (besides the checkpoints and the ids).
SUBMISSION_SETTINGS = ("split", "tta_flip", "amp")


def dump_record(ckpt_path, ckpt, npz_root, out_dir):
    """Stage 5: the checkpoint's content hash and input size (and kind, other than the recipe's
    windows), the label order of ``labels``, the npz set as input; with
    ``exam_targets.in_embedding`` also ``logits``, what the embedding's last dims stand for."""
    from ..models import exam_targets
    from ..models.networks import output_labels
    from ..train.run_records import input_records

    refs, _ = input_records({"npz": npz_root}, out_dir)
    trained_on = (ckpt["record"].get("inputs") or {}).get("jpegs", {}).get("digest")
    packed_from = (provenance.read_record(npz_root)["inputs"] or {}).get("jpegs", {}).get("digest")
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


def submission_record(cfg, sources, ids_csv, calibration=None):
    """Stage 7: every pair's model hashes (checkpoint files, or a bundle's weights files), the
    id list's hash, the deciding settings; with a bundle's calibration (Ensemble.calibration_info)
    its file's hash, which decides too, and its method and labels; with ``runtime: onnx`` the
    runtime (the pairs are then the ONNX files' hashes)."""
    rec = provenance.make("inference", {
        **{k: cfg[k] for k in SUBMISSION_SETTINGS},
        "ids_sha256": provenance.file_sha256(ids_csv),
        "pairs": [{"cnn": s["cnn"], "rnn": s["rnn"]} for s in sources],
        # only when not torch: a submission of the torch runtime keeps the record it always had
        **({"runtime": cfg["runtime"]}
           if cfg.get("runtime", "torch") != "torch" else {}),
        # only for any tree: the Kaggle layout's record stays as it always was
        **({"input_layout": cfg["input_layout"], "series_selection": cfg["series_selection"]}
           if cfg.get("input_layout", "kaggle") != "kaggle" else {}),
        # only when present: a submission without calibration keeps the record it always had
        **({"calibration_sha256": calibration["sha256"]} if calibration else {})})
    rec["info"]["checkpoints"] = [s["where"] for s in sources]
    if calibration:
        rec["info"]["calibration"] = calibration
    return rec
