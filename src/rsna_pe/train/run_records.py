"""Records of training runs (stages 3 and 6) and the rerun rule of a run folder.

They extend the chain of rsna_pe.records.provenance: a run's ``record.json`` holds what decides what it
learns (its decisive config), the label order of its outputs and its input sets (referenced by
their records, with their params); every checkpoint carries its run's record too. Records name
the order of the labels their outputs stand for (a CNN: ``pe_present_on_image``, then any exam
labels it also learns per slice; a head: LABELS): a checkpoint made with another order is
refused, never read by position (rsna_pe.train.checkpoint).
"""
import copy
from pathlib import Path

from ..core import labels as L
from ..core.errors import PipelineError
from ..core.io import has_outputs
from ..core.runtime import on_main
from ..data.model_input import DEFAULT_INPUT
from ..models import exam_targets
from ..models.networks import output_labels
from ..records import provenance
from .registry import task_class

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
            provenance.check_label_order(rec["params"]["labels"], L.LABELS,
                                         provenance.record_path(where), "remake it with overwrite=true")
        refs[name] = provenance.ref(where, from_dir)
        params[name] = rec["params"]
    return refs, params


def run_record(cfg, run_dir):
    """A training run's record: decisive config, output label order, inputs (and their params:
    a CNN's JPEG settings, which inference reproduces; a head's dumped checkpoint hash, which
    inference checks against the CNN it is paired with)."""
    refs, params = input_records(task_class(cfg).input_sets(cfg), run_dir)
    return provenance.make(f"train_{cfg['network']}", {
        "config": decisive_config(cfg), "labels": output_labels(cfg), "input_params": params}, refs)


def guard_run(cfg, run_dir, d):
    """The rerun rule for a training run (stage 3 or 6); returns its record. A finished or
    partial run made from other inputs or settings stops; ``overwrite=true`` starts afresh."""
    def decide():
        record = run_record(cfg, run_dir)
        provenance.guard(run_dir, record, has_outputs(run_dir), cfg.get("overwrite", False),
                         "training run")
        return record
    return on_main(d, decide)
