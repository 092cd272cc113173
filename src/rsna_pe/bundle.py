"""A shareable model bundle: the ensemble as safetensors weights plus JSON, hashed.

``export`` turns the run folders' checkpoints into one folder:

    <name>.safetensors   the weights of one model (a CNN or an LSTM head)
    <name>.json          what rebuilds it: its training config as saved in its checkpoint, the
                         order of its output labels, its input (size, windows, kind), the
                         post-processing, where it came from; heads also their prior and scores
    prior.json           the label prior: mean over the heads (as Ensemble uses it) and per head
    MODEL_CARD.md        data and its terms, citation, cross-validation scores, versions, limits
    manifest.json        format name and version, the CNN/head pairs, every file's sha256

``load`` checks the format version and every file's hash before it builds anything, and reads
weights with safetensors and everything else as JSON: no pickle from a bundle is ever
unpickled. A model is rebuilt by network name through the Task registry (no code is named
by the bundle), then its weights are loaded strictly.
"""
import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from . import exam_targets
from .checkpoint import read_checkpoint
from .errors import PipelineError
from .io import atomic_dir
from .labels import EXAM_LABELS, IMAGE_LABEL, LABELS
from .model_input import input_channels, input_kind
from .windows import WINDOWS

log = logging.getLogger(__name__)

FORMAT = "rsna-pe-model-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PRIOR = "prior.json"
CARD = "MODEL_CARD.md"
# metric.postprocess: the original solution's consistency rules (PIPELINE.md section 6).
POSTPROCESS = "rsna-str-pe-consistency-v1"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj):
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def output_labels(kind, cfg=None):
    """Label order of a model's outputs (a CNN's exam outputs: rsna_pe.exam_targets)."""
    if kind == "cnn":
        extra = exam_targets.target_labels((cfg or {}).get("model"))
        return {"image": [IMAGE_LABEL], **({"exam": list(extra)} if extra else {})}
    return {"image": [IMAGE_LABEL], "exam": list(EXAM_LABELS)}


# ----------------------------------------------------------------------------- export
def _model_entry(kind, path, ckpt, name):
    cfg = ckpt["config"]
    ds = cfg.get("dataset", {})
    entry = {"name": name, "kind": kind, "weights": f"{name}.safetensors", "config": cfg,
             "record": ckpt.get("record"),
             "labels": output_labels(kind, cfg),
             "source": {"run_name": cfg.get("run_name"), "fold": ds.get("fold"),
                        "checkpoint": Path(path).name, "epoch": ckpt.get("epoch"),
                        "step": ckpt.get("step"), "metrics": ckpt.get("metrics", {})}}
    if kind == "cnn":
        what = input_kind(cfg)
        entry["input"] = {"size": ds.get("size"), "jpeg_size": cfg.get("jpeg_size"),
                          "kind": what, "channels": input_channels(what),
                          "windows": {k: {"level": lv, "width": wd} for k, (lv, wd) in WINDOWS.items()},
                          "range": "uint8 0-255, normalised inside the model"}
    else:
        run = Path(path).parent
        entry["cnn_run"] = ds.get("cnn_run")
        entry["postprocess"] = POSTPROCESS
        entry["prior"] = _read_json(run / PRIOR, "label prior of the head's run")
        scores = run / "scores.json"
        entry["cv"] = _read_json(scores, "scores") if scores.is_file() else None
    return entry


def _read_json(path, what):
    if not Path(path).is_file():
        raise PipelineError(f"{path}: {what} not found")
    return json.loads(Path(path).read_text())


def _weights_bytes(state_dict):
    from safetensors.torch import save

    # safetensors refuses shared or strided storage; own contiguous copies store cleanly.
    return save({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()},
                metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})


def _add_model(files, models, names, kind, path):
    """Add one checkpoint's two files (once per checkpoint path); return its name."""
    key = str(Path(path).resolve())
    if key in names:
        return names[key]
    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    name = f"{cfg.get('run_name', Path(path).parent.parent.name)}.fold{cfg.get('dataset', {}).get('fold')}.{kind}"
    if name in names.values():  # e.g. two checkpoints of one run: keep both, apart
        name = f"{name}.{Path(path).stem}"
    entry = _model_entry(kind, path, ckpt, name)
    files[entry["weights"]] = _weights_bytes(ckpt["model"])
    files[f"{name}.json"] = _json_bytes(entry)
    models[name] = entry
    names[key] = name
    return name


def export(pairs, out, overwrite=False, inference_cfg=None):
    """Write the bundle of ``pairs`` [(cnn_ckpt, rnn_ckpt)] to the folder ``out``; -> manifest."""
    from .bundle_card import model_card

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PipelineError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")
    files, models, names, pair_names = {}, {}, {}, []
    for cnn_path, rnn_path in pairs:
        cnn, rnn = _add_model(files, models, names, "cnn", cnn_path), _add_model(files, models, names, "rnn", rnn_path)
        want = models[rnn]["cnn_run"]
        if want and want != models[cnn]["source"]["run_name"]:
            raise PipelineError(f"{rnn_path}: head trained on embeddings of '{want}', paired with "
                                f"CNN run '{models[cnn]['source']['run_name']}' ({cnn_path})")
        pair_names.append({"cnn": cnn, "rnn": rnn})
    heads = [models[p["rnn"]] for p in pair_names]
    prior = {"mean": mean_prior([h["prior"] for h in heads]), "per_head": {h["name"]: h["prior"] for h in heads}}
    files[PRIOR] = _json_bytes(prior)
    files[CARD] = model_card(models, pair_names, prior, inference_cfg).encode()
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "pairs": pair_names,
                "postprocess": POSTPROCESS, "labels": list(LABELS),
                "files": {k: _sha256(v) for k, v in sorted(files.items())}}
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_bytes(_json_bytes(manifest))
    log.info("wrote %s: %d pairs, %d files; manifest sha256 %s", out, len(pair_names), len(files),
             _sha256((out / MANIFEST).read_bytes()))
    return manifest


def mean_prior(priors):
    """The labels' mean over several priors, as the Ensemble averages its heads' priors."""
    return {k: float(np.mean([p[k] for p in priors])) for k in priors[0]}


# ----------------------------------------------------------------------------- load
def read_manifest(bundle):
    """The manifest, after checking its format and version and every listed file's sha256."""
    bundle = Path(bundle)
    path = bundle / MANIFEST
    if not path.is_file():
        raise PipelineError(f"{path}: not found ({bundle} is not a model bundle)")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise PipelineError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PipelineError(f"{path}: bundle format version {manifest.get('format_version')}, this "
                            f"code reads version {FORMAT_VERSION}")
    for name in manifest.get("files", {}):
        read_verified(bundle, manifest, name)
    return manifest


def read_verified(bundle, manifest, name):
    """The bytes of a bundle file that the manifest lists, if its sha256 matches."""
    files = manifest.get("files", {})
    path = Path(bundle) / name
    if Path(name).name != name:  # a manifest must not reach outside its folder
        raise PipelineError(f"{Path(bundle) / MANIFEST}: '{name}' is not a plain file name")
    if name not in files:
        raise PipelineError(f"{path}: not listed in the bundle's {MANIFEST}")
    if not path.is_file():
        raise PipelineError(f"{path}: listed in the bundle's {MANIFEST} but missing")
    data = path.read_bytes()
    if _sha256(data) != files[name]:
        raise PipelineError(f"{path}: sha256 does not match the bundle's {MANIFEST} "
                            "(file modified or corrupt); refusing to load")
    return data


def _load_model(bundle, manifest, name, device):
    """-> (model in eval mode, its training config)."""
    from safetensors.torch import load

    from .tasks import get_task, without_pretrained

    path = Path(bundle) / f"{name}.json"
    entry = json.loads(read_verified(bundle, manifest, path.name))
    want = output_labels(entry.get("kind"), entry.get("config"))
    if entry.get("labels") != want:
        raise PipelineError(f"{path}: output labels {entry.get('labels')} are not in this code's "
                            f"order {want}")
    model = get_task(without_pretrained(entry["config"])).build_model()
    weights = Path(bundle) / entry["weights"]
    try:
        model.load_state_dict(load(read_verified(bundle, manifest, weights.name)))
    except RuntimeError as e:
        raise PipelineError(f"{weights}: weights do not fit the model its json describes "
                            f"({str(e).splitlines()[0]})") from None
    # What Ensemble reads of a checkpoint (its config and record), and the weights' hash.
    return model.to(device).eval(), {"config": entry["config"], "record": entry.get("record")}, \
        manifest["files"][weights.name]


def load(bundle, device="cpu"):
    """-> ([(cnn, cnn_cfg, rnn, rnn_cfg)] on ``device`` (CNNs on CPU, the Embedder moves them),
    the mean label prior)."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if manifest.get("labels") != list(LABELS):
        raise PipelineError(f"{bundle / MANIFEST}: label order {manifest.get('labels')} differs from {list(LABELS)}")
    members, sources = [], []
    for pair in manifest["pairs"]:
        cnn, cnn_ckpt, cnn_sha = _load_model(bundle, manifest, pair["cnn"], "cpu")
        rnn, rnn_ckpt, rnn_sha = _load_model(bundle, manifest, pair["rnn"], device)
        ccfg, rcfg = cnn_ckpt["config"], rnn_ckpt["config"]
        if (rcfg["dataset"].get("cnn_run"), rcfg["dataset"]["fold"]) != (ccfg["run_name"], ccfg["dataset"]["fold"]):
            raise PipelineError(f"{bundle / pair['rnn']}.json: head of CNN run {rcfg['dataset'].get('cnn_run')} "
                                f"fold {rcfg['dataset']['fold']} paired with {ccfg['run_name']} fold "
                                f"{ccfg['dataset']['fold']}")
        members.append((cnn, cnn_ckpt, rnn, bundle / f"{pair['cnn']}.json"))
        sources.append({"cnn": cnn_sha, "rnn": rnn_sha, "where": [str(bundle / f"{pair[k]}.json") for k in ("cnn", "rnn")]})
    prior = json.loads(read_verified(bundle, manifest, PRIOR))["mean"]
    log.info("model bundle %s: %d pairs, manifest sha256 %s", bundle, len(members),
             _sha256((bundle / MANIFEST).read_bytes()))
    return members, prior, sources


def load_ensemble(cfg, device, compile=False):
    """The inference ensemble from ``cfg['bundle']`` if set, else from the run folders."""
    from .ensemble import Ensemble, resolve_pairs

    kw = dict(chunk=cfg["batch_size"], amp=cfg["amp"], channels_last=cfg["channels_last"],
              compile=compile, tta_flip=cfg["tta_flip"])
    if cfg.get("bundle"):
        members, prior, sources = load(cfg["bundle"], device)
        return Ensemble.from_models(members, prior, sources, device, **kw)
    return Ensemble(resolve_pairs(cfg), device, **kw)
