"""A shareable model bundle: the ensemble as safetensors weights plus JSON, hashed.

``export`` turns the run folders' checkpoints into one folder:

    <name>.safetensors   the weights of one model (a CNN or an LSTM head)
    <name>.json          what rebuilds it: its training config as saved in its checkpoint, the
                         order of its output labels, its input (size, windows, kind), the
                         post-processing, where it came from; heads also their prior and scores
    prior.json           the label prior: mean over the heads (as Ensemble uses it) and per head
    MODEL_CARD.md        data and its terms, citation, cross-validation scores, versions, limits
    manifest.json        format name and version, the CNN/head pairs, every file's sha256

and, when given, a site's ``operating_points.json`` and ``calibration.json`` (checked by
rsna_pe.infer.operating_points and rsna_pe.infer.calibration; rsna_pe.infer.site_files adds
them to a new bundle made from an existing one).

``load_bundle`` treats a bundle as data from a stranger. It reads each file once (no symbolic
links, no names with folders in them), checks the manifest's structure, format version and
every file's hash before it builds anything, and parses and loads those same bytes: weights
with safetensors, everything else as strict JSON; no pickle from a bundle is ever unpickled. A
model is rebuilt by network name (rsna_pe.models.networks; no code is named by the bundle), its CNN
backbone only by a timm architecture name and without pretrained weights (nothing is fetched
or read from outside the bundle), then its weights are loaded strictly. Any damage stops with
one line naming the file and the key (docs/bundle.md). ``open_bundle`` also gives the site
files, parsed from those same verified bytes; the ensemble applies a calibration
(rsna_pe.infer.ensemble).
"""
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import stat
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import atomic_dir, strict_json, strict_loads
from ..core.labels import IMAGE_LABEL, LABELS
from ..core.paths import PRIOR_FILE
from ..data.model_input import input_channels, input_kind
from ..data.windows import WINDOWS
from ..models.cnn import offline_backbone
from ..models.networks import build_network, output_labels, without_pretrained
from ..train.checkpoint import read_checkpoint
from . import calibration
from .bundle_card import model_card
from .pairs import head_mismatch, jpeg_settings, mean_prior
from .site_files import SITE_FILES

log = logging.getLogger(__name__)

FORMAT = "rsna-pe-model-bundle"
FORMAT_VERSION = 1
# A bundle that carries a calibration is version 2, so that code which reads only version 1
# (and would ignore the calibration) refuses it instead of predicting uncalibrated.
CALIBRATED_VERSION = 2
READ_VERSIONS = (FORMAT_VERSION, CALIBRATED_VERSION)
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
# metric.postprocess: the original solution's consistency rules (PIPELINE.md section 6).
POSTPROCESS = "rsna-str-pe-consistency-v1"


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj, where):
    return (strict_json(obj, where, indent=1, sort_keys=False) + "\n").encode()


def _finite(obj):
    """``obj`` with each non-finite number as null: a measurement that is undefined (the AUC of
    a one-class validation set is NaN) must not make the file invalid JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return None if isinstance(obj, float) and not math.isfinite(obj) else obj


def label_groups(kind, cfg):
    """The labels of a ``kind`` model's outputs (rsna_pe.models.networks.output_labels) as its JSON
    keeps them: {"image": [IMAGE_LABEL], "exam": [...]}, no "exam" for a CNN without exam outputs."""
    names = output_labels({**cfg, "network": kind})
    exam = [n for n in names if n != IMAGE_LABEL]
    return {"image": [n for n in names if n == IMAGE_LABEL], **({"exam": exam} if exam else {})}


# ----------------------------------------------------------------------------- export
def _model_entry(kind, path, ckpt, name):
    cfg = ckpt["config"]
    ds = cfg.get("dataset", {})
    entry = {"name": name, "kind": kind, "weights": f"{name}.safetensors", "config": cfg,
             "record": ckpt.get("record"),
             "labels": label_groups(kind, cfg),
             "source": {"run_name": cfg.get("run_name"), "fold": ds.get("fold"),
                        "checkpoint": Path(path).name, "epoch": ckpt.get("epoch"),
                        "step": ckpt.get("step"), "metrics": _finite(ckpt.get("metrics", {}))}}
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
        entry["prior"] = _read_json(run / PRIOR_FILE, "label prior of the head's run")
        scores = run / "scores.json"
        entry["cv"] = _finite(_read_json(scores, "scores")) if scores.is_file() else None
    return entry


def _read_json(path, what):
    if not Path(path).is_file():
        raise PipelineError(f"{path}: {what} not found")
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, OSError) as e:
        raise PipelineError(f"{path}: {what} not readable as JSON ({type(e).__name__})") from None


def _weights_bytes(state_dict):
    import safetensors.torch  # optional dependency: only bundles need it

    # safetensors refuses shared or strided storage; own contiguous copies store cleanly.
    own = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    return safetensors.torch.save(own, metadata={"format": FORMAT, "format_version": str(FORMAT_VERSION)})


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
    _plain_name(name, path, "run_name")  # loading refuses names with folders in them
    entry = _model_entry(kind, path, ckpt, name)
    files[entry["weights"]] = _weights_bytes(ckpt["model"])
    files[f"{name}.json"] = _json_bytes(entry, path)
    models[name] = entry
    names[key] = name
    return name


def refuse_full(out, overwrite):
    """A non-empty ``out`` is replaced only with ``overwrite``: checked before any work."""
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise PipelineError(f"{out}: folder exists and is not empty (pass --overwrite to replace it)")


def export(pairs, out, overwrite=False, inference_cfg=None, site=None):
    """Write the bundle of ``pairs`` [(cnn_ckpt, rnn_ckpt)] to the folder ``out``, with the site
    files ``site`` {file name: (bytes, checked document)} (rsna_pe.infer.site_files.given); -> manifest."""
    out, site = Path(out), site or {}
    refuse_full(out, overwrite)
    files, models, names, pair_names = {}, {}, {}, []
    for cnn_path, rnn_path in pairs:
        cnn, rnn = _add_model(files, models, names, "cnn", cnn_path), _add_model(files, models, names, "rnn", rnn_path)
        want = models[rnn]["cnn_run"]
        if want and head_mismatch(models[cnn]["config"], models[rnn]["config"]) == "run":
            raise PipelineError(f"{rnn_path}: head trained on embeddings of '{want}', paired with "
                                f"CNN run '{models[cnn]['source']['run_name']}' ({cnn_path})")
        pair_names.append({"cnn": cnn, "rnn": rnn})
    heads = [models[p["rnn"]] for p in pair_names]
    prior = {"mean": mean_prior([h["prior"] for h in heads]), "per_head": {h["name"]: h["prior"] for h in heads}}
    files[PRIOR_FILE] = _json_bytes(prior, out / PRIOR_FILE)
    files.update({name: data for name, (data, _) in site.items()})
    docs = {name: doc for name, (_, doc) in site.items()}
    files[CARD] = model_card(models, pair_names, prior, inference_cfg, docs).encode()
    return write_bundle(out, files, pair_names)


def write_bundle(out, files, pairs, base=None):
    """``files`` {name: bytes} and their manifest into the folder ``out``, atomically; ``base``:
    the manifest sha256 of the bundle this one was made from."""
    version = CALIBRATED_VERSION if calibration.FILE in files else FORMAT_VERSION
    manifest = {"format": FORMAT, "format_version": version, "pairs": pairs,
                "postprocess": POSTPROCESS, "labels": list(LABELS),
                **({"derived_from": {"manifest_sha256": base}} if base else {}),
                "files": {k: _sha256(v) for k, v in sorted(files.items())}}
    raw = _json_bytes(manifest, out / MANIFEST)
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_bytes(raw)
    log.info("wrote %s: %d pairs, %d files; manifest sha256 %s", out, len(pairs), len(files), _sha256(raw))
    return manifest


# ----------------------------------------------------------------------------- load
KINDS = ("cnn", "rnn")
MAX_INPUT_SIZE = 2048  # px; a CT slice is 512, so anything above is damage
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JSON_TYPES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}
# What loading reads of a model's JSON, beyond ``kind`` and ``config.network`` (the Ensemble
# reads the CNN's input size and the JPEG settings in its record).
_REQUIRED = (("weights", str), ("labels", dict), ("config.model", dict), ("config.run_name", str),
             ("config.dataset.fold", int))
_REQUIRED_OF = {"cnn": (("config.dataset.size", int), ("record", dict)),
                "rnn": (("config.dataset.cnn_run", str),)}


def _plain_name(name, where, key):
    """``name`` if it is a plain file name: a bundle's files sit in its folder, and a name with
    folders in it is refused, never cut to its last part."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise PipelineError(f"{where}: key '{key}': {name!r:.80} is not a plain file name")
    return name


def _at(obj, key, types, where):
    """``obj[key]`` for a dotted ``key`` (list items by number), checked to be of ``types`` (a
    bool is not an int here): damage stops with one line naming the file and the key."""
    node = obj
    for i, part in enumerate(key.split(".")):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            inside = "'" + ".".join(key.split(".")[:i]) + "'" if i else "the file"
            what = "" if isinstance(node, dict) else f" ({inside} is {_JSON_TYPES.get(type(node), 'not JSON')})"
            raise PipelineError(f"{where}: key '{key}' is missing{what}")
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(node, types) or (isinstance(node, bool) and bool not in types):
        want = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in types)
        raise PipelineError(f"{where}: key '{key}' is {_JSON_TYPES.get(type(node), type(node).__name__)}, "
                            f"expected {want}")
    return node


@contextlib.contextmanager
def _one_line(where, key):
    """Damage deeper than the explicit checks (in a model's config or record) still stops with
    one line naming the file and the block, whatever the code fed with it raises."""
    try:
        yield
    except PipelineError as e:
        if str(where) in str(e):  # names the file already
            raise
        raise PipelineError(f"{where}: key '{key}': {e}") from None
    except Exception as e:  # noqa: BLE001 - a builder fed a damaged config can raise anything
        raise PipelineError(f"{where}: key '{key}' is not usable ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0][:120]})") from None


def _read_plain(path):
    """The bytes of ``path`` (None if absent), read once, if it is a regular file: a symbolic
    link is refused, not followed, even one made after the folder was listed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if Path(path).is_symlink():
            raise PipelineError(f"{path}: a symbolic link; a bundle holds plain files only") from None
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise PipelineError(f"{path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_bundle(bundle):
    """-> (manifest, {listed file name: its bytes}, sha256 of the manifest's bytes), after
    checking the manifest's structure, format and version and every listed file's sha256.
    Each file is read once: what is hashed is what is parsed and loaded."""
    bundle = Path(bundle)
    links = sorted(p.name for p in bundle.iterdir() if p.is_symlink()) if bundle.is_dir() else []
    if links:
        raise PipelineError(f"{bundle / links[0]}: a symbolic link; a bundle holds plain files only")
    path = bundle / MANIFEST
    raw = _read_plain(path)
    if raw is None:
        raise PipelineError(f"{path}: not found ({bundle} is not a model bundle)")
    manifest = _check_manifest(strict_loads(raw, path), path)
    files = {name: _verified(bundle / name, digest) for name, digest in manifest["files"].items()}
    return manifest, files, _sha256(raw)


def read_verified(bundle, name):
    """The bytes of the file ``name`` of a bundle if its manifest (checked) lists it and its
    sha256 matches, None if it is not listed; the other files are not read."""
    path = Path(bundle) / MANIFEST
    raw = _read_plain(path)
    if raw is None:
        raise PipelineError(f"{path}: not found ({bundle} is not a model bundle)")
    digest = _check_manifest(strict_loads(raw, path), path)["files"].get(name)
    return None if digest is None else _verified(Path(bundle) / name, digest)


def _check_manifest(manifest, path):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READ_VERSIONS:  # true == 1 in Python, yet no version
        raise PipelineError(f"{path}: bundle format version {version!r:.40}, this code reads versions "
                            f"{' and '.join(map(str, READ_VERSIONS))}")
    for name, digest in _at(manifest, "files", dict, path).items():
        _plain_name(name, path, "files")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise PipelineError(f"{path}: key 'files' gives {name!r:.80} no sha256 (64 hex digits)")
    if not _at(manifest, "pairs", list, path):
        raise PipelineError(f"{path}: key 'pairs' is empty")
    for i in range(len(manifest["pairs"])):
        for kind in KINDS:
            _plain_name(_at(manifest, f"pairs.{i}.{kind}", str, path), path, f"pairs.{i}.{kind}")
    if _at(manifest, "labels", list, path) != list(LABELS):
        raise PipelineError(f"{path}: label order {manifest['labels']!r:.200} differs from {list(LABELS)}")
    if manifest.get("postprocess") != POSTPROCESS:
        raise PipelineError(f"{path}: key 'postprocess' is {manifest.get('postprocess')!r:.80}, this "
                            f"code applies {POSTPROCESS}")
    return manifest


def _verified(path, digest):
    data = _read_plain(path)
    if data is None:
        raise PipelineError(f"{path}: listed in the bundle's {MANIFEST} but missing")
    if _sha256(data) != digest:
        raise PipelineError(f"{path}: sha256 does not match the bundle's {MANIFEST} "
                            "(file modified or corrupt); refusing to load")
    return data


def _listed(bundle, files, name):
    if name not in files:
        raise PipelineError(f"{Path(bundle) / name}: not listed in the bundle's {MANIFEST}")
    return files[name]


def _entry(bundle, files, name, kind):
    """-> (a model's JSON, its path), its structure checked as far as loading reads it."""
    path = Path(bundle) / f"{name}.json"
    entry = strict_loads(_listed(bundle, files, path.name), path)
    got = (_at(entry, "kind", str, path), _at(entry, "config.network", str, path))
    if got != (kind, kind):
        raise PipelineError(f"{path}: keys 'kind' and 'config.network' are {got[0]!r:.20} and "
                            f"{got[1]!r:.20}; the manifest pairs it as the {kind}")
    for key, types in _REQUIRED + _REQUIRED_OF[kind]:
        _at(entry, key, types, path)
    _plain_name(entry["weights"], path, "weights")
    cfg = entry["config"]
    if kind == "cnn":
        offline_backbone(cfg["model"].get("backbone"), f"{path}: key 'config.model.backbone'")
        if not 0 < cfg["dataset"]["size"] <= MAX_INPUT_SIZE:  # else every study fails, silently given the prior
            raise PipelineError(f"{path}: key 'config.dataset.size' is {cfg['dataset']['size']}, expected "
                                f"1 to {MAX_INPUT_SIZE}")
    return entry, path


def _load_model(bundle, files, name, kind, device):
    """-> (model in eval mode, its checkpoint fields (config, record), sha256 of the weights'
    bytes it was loaded from)."""
    import safetensors.torch  # optional dependency: only bundles need it

    entry, path = _entry(bundle, files, name, kind)
    cfg = entry["config"]
    with _one_line(path, "config"):
        want = label_groups(kind, cfg)
        # Built without pretrained weights (whatever the config says), then given the bundle's.
        model = build_network(without_pretrained(cfg))
        if kind == "cnn":
            input_kind(cfg)
    if kind == "cnn":
        with _one_line(path, "record"):  # what the Ensemble reads of it
            jpeg_settings(entry, path)
    if entry["labels"] != want:
        raise PipelineError(f"{path}: output labels {entry['labels']!r:.200} are not in this code's order {want}")
    weights = Path(bundle) / entry["weights"]
    data = _listed(bundle, files, weights.name)
    try:
        state = safetensors.torch.load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
        raise PipelineError(f"{weights}: not a safetensors file "
                            f"({(str(e).splitlines() or [''])[0][:120]})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise PipelineError(f"{weights}: weights do not fit the model its json describes "
                            f"({str(e).splitlines()[0]})") from None
    # What Ensemble reads of a checkpoint (its config and record), and the weights' hash.
    return model.to(device).eval(), {"config": cfg, "record": entry.get("record")}, _sha256(data)


def _prior(bundle, files):
    """The mean label prior of ``prior.json``: a probability for each label."""
    path = Path(bundle) / PRIOR_FILE
    mean = _at(strict_loads(_listed(bundle, files, PRIOR_FILE), path), "mean", dict, path)
    if set(mean) != set(LABELS) or not all(type(v) in (int, float) and 0 <= v <= 1 for v in mean.values()):
        raise PipelineError(f"{path}: key 'mean' must give each of the {len(LABELS)} labels a probability")
    return mean


def site_docs(bundle, files):
    """{file name: checked document} of the site files among a bundle's verified files."""
    return {name: parse(files[name], Path(bundle) / name) for name, parse in SITE_FILES.items() if name in files}


def load_bundle(bundle, device="cpu"):
    """-> (pairs, mean label prior, sources) as ``open_bundle``, without the site files."""
    return open_bundle(bundle, device)[:3]


def open_bundle(bundle, device="cpu"):
    """-> ([(cnn, cnn_cfg, rnn, rnn_cfg)] on ``device`` (CNNs on CPU, the Embedder moves them),
    the mean label prior, each pair's sources (the sha256 of the bytes its weights came from),
    the site files {file name: {"doc": checked document, "sha256": of its bytes}})."""
    bundle = Path(bundle)
    manifest, files, manifest_sha = read_bundle(bundle)
    members, sources = [], []
    for pair in manifest["pairs"]:
        cnn, cnn_ckpt, cnn_sha = _load_model(bundle, files, pair["cnn"], "cnn", "cpu")
        rnn, rnn_ckpt, rnn_sha = _load_model(bundle, files, pair["rnn"], "rnn", device)
        ccfg, rcfg = cnn_ckpt["config"], rnn_ckpt["config"]
        if head_mismatch(ccfg, rcfg):
            raise PipelineError(f"{bundle / pair['rnn']}.json: head of CNN run {rcfg['dataset']['cnn_run']} "
                                f"fold {rcfg['dataset']['fold']} paired with {ccfg['run_name']} fold "
                                f"{ccfg['dataset']['fold']}")
        members.append((cnn, cnn_ckpt, rnn, bundle / f"{pair['cnn']}.json"))
        sources.append({"cnn": cnn_sha, "rnn": rnn_sha, "where": [str(bundle / f"{pair[k]}.json") for k in KINDS]})
    prior = _prior(bundle, files)
    site = {name: {"doc": doc, "sha256": manifest["files"][name]} for name, doc in site_docs(bundle, files).items()}
    log.info("model bundle %s: %d pairs%s, manifest sha256 %s", bundle, len(members),
             "".join(f", {name}" for name in site), manifest_sha)
    return members, prior, sources, site

