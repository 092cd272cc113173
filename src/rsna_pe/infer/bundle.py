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
rsna_pe.infer.operating_points and rsna_pe.infer.calibration; ``derive`` adds
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

With ``onnx`` (the default from run folders) export also writes ``<name>.onnx``, each model as
ONNX, built from the bundle's own weights and checked against them (rsna_pe.infer.onnx_export),
listed in the manifest's ``onnx`` section and hashed like the rest; rsna_pe.infer.onnx_runtime
runs them without torch. The networks, timm and torch are imported only where a model is built
or exported, so that a bundle's JSON files can be read and checked without them.
"""
import contextlib
import json
import logging
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import atomic_dir, json_ready, strict_json, strict_loads
from ..core.labels import IMAGE_LABEL, LABELS
from ..core.paths import PRIOR_FILE
from ..data.model_input import input_channels, input_kind
from ..data.windows import WINDOWS
from . import calibration
from .bundle_card import model_card, with_onnx_section, with_site_section
from .bundle_files import (
    CALIBRATED_VERSION,
    CARD,
    FORMAT,
    FORMAT_VERSION,
    KINDS,
    MANIFEST,
    ONNX_SUFFIX,
    POSTPROCESS,
    key_of,
    listed,
    plain_name,
    read_bundle,
    sha256_hex,
)
from .pairs import head_mismatch, jpeg_settings, mean_prior
from .site_files import SITE_FILES

log = logging.getLogger(__name__)


def _json_bytes(obj, where):
    return (strict_json(obj, where, indent=1, sort_keys=False) + "\n").encode()



def label_groups(kind, cfg):
    """The labels of a ``kind`` model's outputs (rsna_pe.models.networks.output_labels) as its JSON
    keeps them: {"image": [IMAGE_LABEL], "exam": [...]}, no "exam" for a CNN without exam outputs."""
    from ..models.networks import output_labels

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
                        "step": ckpt.get("step"), "metrics": json_ready(ckpt.get("metrics", {}))}}
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
        entry["cv"] = json_ready(_read_json(scores, "scores")) if scores.is_file() else None
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
    from ..train.checkpoint import read_checkpoint

    ckpt = read_checkpoint(path)
    cfg = ckpt["config"]
    name = f"{cfg.get('run_name', Path(path).parent.parent.name)}.fold{cfg.get('dataset', {}).get('fold')}.{kind}"
    if name in names.values():  # e.g. two checkpoints of one run: keep both, apart
        name = f"{name}.{Path(path).stem}"
    plain_name(name, path, "run_name")  # loading refuses names with folders in them
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


def export(pairs, out, overwrite=False, inference_cfg=None, site=None, onnx=True):
    """Write the bundle of ``pairs`` [(cnn_ckpt, rnn_ckpt)] to the folder ``out``, with the site
    files ``site`` {file name: (bytes, checked document)} (rsna_pe.infer.site_files.given) and,
    with ``onnx``, every model as ONNX; -> manifest."""
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
    section = add_onnx(out, files, pair_names) if onnx else None
    files[CARD] = model_card(models, pair_names, prior, inference_cfg, docs, onnx=section).encode()
    return write_bundle(out, files, pair_names, onnx=section)


def add_onnx(out, files, pairs):
    """Each model of ``pairs`` as ONNX, built from ``files`` (the bundle's bytes, {name: bytes})
    exactly as loading builds it and checked against it: the .onnx files go into ``files``;
    -> the manifest's ``onnx`` section."""
    from . import onnx_export  # torch and onnxscript: only an export needs them

    def load(name, kind):
        model, fields, _ = _load_model(out, files, name, kind, "cpu")
        return model, fields

    onnx_files, section = onnx_export.export_pairs(out, pairs, load)
    files.update(onnx_files)
    return section


def write_bundle(out, files, pairs, base=None, onnx=None):
    """``files`` {name: bytes} and their manifest into the folder ``out``, atomically; ``base``:
    the manifest sha256 of the bundle this one was made from; ``onnx``: the ONNX section."""
    version = CALIBRATED_VERSION if calibration.FILE in files else FORMAT_VERSION
    manifest = {"format": FORMAT, "format_version": version, "pairs": pairs,
                "postprocess": POSTPROCESS, "labels": list(LABELS),
                **({"derived_from": {"manifest_sha256": base}} if base else {}),
                **({"onnx": onnx} if onnx else {}),
                "files": {k: sha256_hex(v) for k, v in sorted(files.items())}}
    raw = _json_bytes(manifest, out / MANIFEST)
    with atomic_dir(out) as tmp:
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / MANIFEST).write_bytes(raw)
    log.info("wrote %s: %d pairs, %d files; manifest sha256 %s", out, len(pairs), len(files), sha256_hex(raw))
    return manifest


MAX_INPUT_SIZE = 2048  # px; a CT slice is 512, so anything above is damage
# What loading reads of a model's JSON, beyond ``kind`` and ``config.network`` (the Ensemble
# reads the CNN's input size and the JPEG settings in its record).
_REQUIRED = (("weights", str), ("labels", dict), ("config.model", dict), ("config.run_name", str),
             ("config.dataset.fold", int))
_REQUIRED_OF = {"cnn": (("config.dataset.size", int), ("record", dict)),
                "rnn": (("config.dataset.cnn_run", str),)}


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


def checked_entry(bundle, files, name, kind, built=True):
    """-> (a model's JSON, its path), its structure checked as far as loading reads it;
    ``built``: its torch model will be built (the CNN's backbone name is then checked too)."""
    path = Path(bundle) / f"{name}.json"
    entry = strict_loads(listed(bundle, files, path.name), path)
    got = (key_of(entry, "kind", str, path), key_of(entry, "config.network", str, path))
    if got != (kind, kind):
        raise PipelineError(f"{path}: keys 'kind' and 'config.network' are {got[0]!r:.20} and "
                            f"{got[1]!r:.20}; the manifest pairs it as the {kind}")
    for key, types in _REQUIRED + _REQUIRED_OF[kind]:
        key_of(entry, key, types, path)
    plain_name(entry["weights"], path, "weights")
    cfg = entry["config"]
    if kind == "cnn" and built:
        from ..models.cnn import offline_backbone

        offline_backbone(cfg["model"].get("backbone"), f"{path}: key 'config.model.backbone'")
    if kind == "cnn":
        if not 0 < cfg["dataset"]["size"] <= MAX_INPUT_SIZE:  # else every study fails, silently given the prior
            raise PipelineError(f"{path}: key 'config.dataset.size' is {cfg['dataset']['size']}, expected "
                                f"1 to {MAX_INPUT_SIZE}")
    return entry, path


def _load_model(bundle, files, name, kind, device):
    """-> (model in eval mode, its checkpoint fields (config, record), sha256 of the weights'
    bytes it was loaded from)."""
    import safetensors.torch  # optional dependency: only bundles need it

    from ..models.networks import build_network, without_pretrained

    entry, path = checked_entry(bundle, files, name, kind)
    cfg = entry["config"]
    with _one_line(path, "config"):
        want = label_groups(kind, cfg)
        # Built without pretrained weights (whatever the config says), then given the bundle's.
        model = build_network(without_pretrained(cfg))
    check_input(entry, path, kind)
    if entry["labels"] != want:
        raise PipelineError(f"{path}: output labels {entry['labels']!r:.200} are not in this code's order {want}")
    weights = Path(bundle) / entry["weights"]
    data = listed(bundle, files, weights.name)
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
    return model.to(device).eval(), {"config": cfg, "record": entry.get("record")}, sha256_hex(data)


def check_input(entry, path, kind):
    """A CNN's input settings as the Ensemble reads them (input kind, the JPEG set's settings in
    its record), any damage one line naming the file and the block."""
    if kind == "cnn":
        with _one_line(path, "config"):
            input_kind(entry["config"])
        with _one_line(path, "record"):
            jpeg_settings(entry, path)


def mean_prior_of(bundle, files):
    """The mean label prior of ``prior.json``: a probability for each label."""
    path = Path(bundle) / PRIOR_FILE
    mean = key_of(strict_loads(listed(bundle, files, PRIOR_FILE), path), "mean", dict, path)
    if set(mean) != set(LABELS) or not all(type(v) in (int, float) and 0 <= v <= 1 for v in mean.values()):
        raise PipelineError(f"{path}: key 'mean' must give each of the {len(LABELS)} labels a probability")
    return mean


def check_pair(bundle, pair, ccfg, rcfg):
    """The head of ``pair`` was trained on its CNN's embeddings (same run, same fold)."""
    if head_mismatch(ccfg, rcfg):
        raise PipelineError(f"{Path(bundle) / pair['rnn']}.json: head of CNN run {rcfg['dataset']['cnn_run']} "
                            f"fold {rcfg['dataset']['fold']} paired with {ccfg['run_name']} fold "
                            f"{ccfg['dataset']['fold']}")


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
    # The ONNX files are verified with the rest, but their bytes are not kept: torch runs the weights.
    manifest, files, manifest_sha = read_bundle(bundle, keep=lambda name: not name.endswith(ONNX_SUFFIX))
    members, sources = [], []
    for pair in manifest["pairs"]:
        cnn, cnn_ckpt, cnn_sha = _load_model(bundle, files, pair["cnn"], "cnn", "cpu")
        rnn, rnn_ckpt, rnn_sha = _load_model(bundle, files, pair["rnn"], "rnn", device)
        check_pair(bundle, pair, cnn_ckpt["config"], rnn_ckpt["config"])
        members.append((cnn, cnn_ckpt, rnn, bundle / f"{pair['cnn']}.json"))
        sources.append({"cnn": cnn_sha, "rnn": rnn_sha, "where": [str(bundle / f"{pair[k]}.json") for k in KINDS]})
    prior = mean_prior_of(bundle, files)
    site = {name: {"doc": doc, "sha256": manifest["files"][name]} for name, doc in site_docs(bundle, files).items()}
    log.info("model bundle %s: %d pairs%s, manifest sha256 %s", bundle, len(members),
             "".join(f", {name}" for name in site), manifest_sha)
    return members, prior, sources, site


def derive(src, out, site, overwrite=False, add=False):
    """A new bundle in ``out``: the bundle ``src`` (every file verified) with the site files
    ``site`` (``given``) added or replaced, its model card naming them, its manifest naming the
    source's manifest sha256; with ``add``, also its models as ONNX if it has none (a bundle
    made before ONNX export); -> the new manifest."""
    out = Path(out)
    manifest, files, sha = read_bundle(src)
    section = manifest.get("onnx")
    add = add and not section
    if not site and not add:
        raise PipelineError(f"{out}: nothing to add to {src} (give operating points or a calibration"
                            f"{'' if section else ', or --onnx'})")
    refuse_full(out, overwrite)
    docs = site_docs(src, files)
    docs.update({name: doc for name, (_, doc) in site.items()})
    files.update({name: data for name, (data, _) in site.items()})
    card = files.get(CARD, b"").decode("utf-8", "replace")
    if add:
        section = add_onnx(out, files, manifest["pairs"])
        card = with_onnx_section(card, section)
    files[CARD] = with_site_section(card, docs).encode()
    return write_bundle(out, files, manifest["pairs"], base=sha, onnx=section)
