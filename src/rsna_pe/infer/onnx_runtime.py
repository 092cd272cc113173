"""A model bundle's ONNX models run by ONNX Runtime on the CPU: stage 7, predict_study and any
caller of rsna_pe.infer.ensemble.load_ensemble with ``runtime: onnx``, without torch.

The bundle is read as every bundle is (rsna_pe.infer.bundle_files: one read per file, sha256
checked on the bytes then parsed, size caps, file names from the manifest only) and each
model's JSON checked as the torch runtime checks it (rsna_pe.infer.bundle), less the backbone
name, from which nothing is built here. An ONNX file must hold all its data: a model that
refers to external data (files ONNX Runtime would open beside it or wherever it runs) is
refused, and so is one whose inputs and outputs are not those rsna_pe.infer.onnx_export writes.

``OnnxEnsemble`` is the Ensemble with ONNX Runtime sessions in place of the torch models: the
same reading (the pixels of the CNN's JPEG codec), the same chunks of ``batch_size`` slices,
the same post-processing and calibration. It makes no activation maps (Grad-CAM needs torch).
"""
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.errors import ConfigError, PipelineError
from ..core.labels import EXAM_LABELS, IMAGE_LABEL
from ..core.runtime import HOST, cpu_threads
from .bundle import check_input, check_pair, checked_entry, mean_prior_of, site_docs
from .bundle_files import MANIFEST, ONNX_SUFFIX, listed, plain_name, read_bundle, sha256_hex
from .calibration import FILE as CALIBRATION_FILE
from .ensemble import Ensemble

log = logging.getLogger(__name__)

# The graphs' inputs and outputs, as export names them: name -> (element type, rank).
CNN_INPUTS, CNN_OUTPUTS = ("images",), ("embedding",)
HEAD_INPUTS, HEAD_OUTPUTS = ("embeddings", "lengths"), ("image_logits", "exam_logits")
_IO = {"images": ("tensor(uint8)", 4), "embedding": ("tensor(float)", 2),
       "embeddings": ("tensor(float)", 3), "lengths": ("tensor(int64)", 1),
       "image_logits": ("tensor(float)", 2), "exam_logits": ("tensor(float)", 2)}
IO = {"cnn": (CNN_INPUTS, CNN_OUTPUTS), "rnn": (HEAD_INPUTS, HEAD_OUTPUTS)}
REEXPORT = "python src/export_models.py --from-bundle DIR --onnx --out NEW_DIR"


@dataclass
class OnnxModel:
    """One model's session, where it came from and what the ensemble reads of it."""
    session: object
    path: Path
    sha256: str
    entry: dict
    logits_in_embedding: bool = False


def onnx_section(bundle, manifest):
    """The manifest's ``onnx`` section, checked as far as loading reads it."""
    path = Path(bundle) / MANIFEST
    section = manifest.get("onnx")
    if section is None:
        raise PipelineError(f"{path}: this bundle has no ONNX models (exported before ONNX or with "
                            f"--no-onnx); re-export it ({REEXPORT}) or run it with runtime=torch")
    models = section.get("models") if isinstance(section, dict) else None
    if not isinstance(models, dict):
        raise PipelineError(f"{path}: key 'onnx.models' is missing or not a mapping")
    for pair in manifest["pairs"]:
        for name in pair.values():
            entry = models.get(name)
            if not (isinstance(entry, dict) and isinstance(entry.get("file"), str)
                    and entry["file"].endswith(ONNX_SUFFIX)):
                raise PipelineError(f"{path}: key 'onnx.models' gives {name!r:.80} no .onnx file")
            plain_name(entry["file"], path, "onnx.models")
    return section


def _external(model):
    """The name of the first tensor anywhere in an ONNX model (graphs, subgraphs, functions,
    attributes, sparse tensors) whose data lies outside the file, or None."""
    from onnx import TensorProto

    def walk(message):
        if isinstance(message, TensorProto) and (message.data_location == TensorProto.EXTERNAL
                                                 or len(message.external_data)):
            return message.name or "(unnamed)"
        for field, value in message.ListFields():
            if field.type == field.TYPE_MESSAGE:
                repeated = field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED
                for item in (value if repeated else (value,)):
                    if (found := walk(item)) is not None:
                        return found
        return None

    return walk(model)


def _check_io(session, path, kind):
    """The session's inputs and outputs are those export writes (names, element types, ranks)."""
    for want, got in zip(IO[kind], (session.get_inputs(), session.get_outputs())):
        found = [(a.name, a.type, len(a.shape)) for a in got]
        if found != [(n, *_IO[n]) for n in want]:
            raise PipelineError(f"{path}: graph inputs/outputs {found!r:.200} are not those of a {kind} "
                                f"(want {list(want)})")


def session_of(data, path, kind, threads):
    """An ONNX Runtime session on the CPU from ``data`` (the bytes whose sha256 was checked),
    after refusing a model that is not ONNX or refers to external data."""
    import onnx
    import onnxruntime as ort

    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # noqa: BLE001 - protobuf raises its own error types
        raise PipelineError(f"{path}: not an ONNX model ({type(e).__name__})") from None
    external = _external(model)
    if external is not None:
        raise PipelineError(f"{path}: tensor {external!r:.80} refers to external data; a bundle's ONNX "
                            "models must hold all their data, refusing to load")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = int(threads), 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Each session has its own threads; spinning ones of the session that just ran would take
    # the cores from the next (the ensemble runs a dozen in turn): the demo ran 2x slower with it.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # A memory pattern is planned per input shape, and a study's last chunk has a shape of its
    # own: without it, rexnet_200 at 512 px took 1.5 GB at peak instead of 2.4, as fast.
    opts.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own error types
        raise PipelineError(f"{path}: ONNX Runtime cannot load it "
                            f"({(str(e).splitlines() or [''])[0][:160]})") from None
    _check_io(session, path, kind)
    return session


def _model(bundle, files, section, name, kind, threads):
    """One model's OnnxModel, its JSON and file checked."""
    entry, json_path = checked_entry(bundle, files, name, kind, built=False)
    check_input(entry, json_path, kind)
    if kind == "rnn" and entry["labels"] != {"image": [IMAGE_LABEL], "exam": list(EXAM_LABELS)}:
        raise PipelineError(f"{json_path}: output labels {entry['labels']!r:.200} are not in this code's order")
    info = section["models"][name]
    path = Path(bundle) / info["file"]
    data = listed(bundle, files, info["file"])
    session = session_of(data, path, kind, threads)
    return OnnxModel(session, path, sha256_hex(data), entry, bool(info.get("logits_in_embedding", False)))


def _width(model, io):
    """The embedding width a CNN gives (``io`` "out") or a head takes ("in"), None if symbolic."""
    dims = (model.session.get_outputs() if io == "out" else model.session.get_inputs())[0].shape
    return dims[-1] if isinstance(dims[-1], int) else None


def load_onnx_ensemble(cfg):
    """The ensemble of ``cfg['bundle']``'s ONNX models on ``onnx_threads`` threads (0: the cores
    this process may use, rsna_pe.core.runtime.cpu_threads)."""
    if not cfg.get("bundle"):
        raise ConfigError("runtime=onnx runs a model bundle's ONNX models: set bundle=DIR "
                          "(src/export_models.py writes one)")
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"runtime=onnx needs {' and '.join(missing)} (pip install -r requirements-onnx.txt)")
    bundle = Path(cfg["bundle"])
    # The weights are verified with the rest, but their bytes are not kept: nothing loads them.
    manifest, files, manifest_sha = read_bundle(bundle, keep=lambda name: not name.endswith(".safetensors"))
    section = onnx_section(bundle, manifest)
    threads = int(cfg.get("onnx_threads") or 0) or cpu_threads()
    members, sources = [], []
    for pair in manifest["pairs"]:
        cnn, rnn = (_model(bundle, files, section, pair[k], k, threads) for k in ("cnn", "rnn"))
        check_pair(bundle, pair, cnn.entry["config"], rnn.entry["config"])
        width, takes = _width(cnn, "out"), _width(rnn, "in")
        if width and takes and width != takes:
            raise PipelineError(f"{rnn.path}: takes embeddings {takes} wide, its CNN {cnn.path.name} gives {width}")
        members.append((cnn, {"config": cnn.entry["config"], "record": cnn.entry.get("record")}, rnn, cnn.path))
        sources.append({"cnn": cnn.sha256, "rnn": rnn.sha256, "where": [str(cnn.path), str(rnn.path)]})
    site = {name: {"doc": doc, "sha256": manifest["files"][name]} for name, doc in site_docs(bundle, files).items()}
    log.info("model bundle %s: %d pairs as ONNX (opset %s) on %d thread(s)%s, manifest sha256 %s", bundle,
             len(members), section.get("opset"), threads, "".join(f", {n}" for n in site), manifest_sha)
    return OnnxEnsemble.from_sessions(members, mean_prior_of(bundle, files), sources, chunk=cfg["batch_size"],
                                      tta_flip=cfg["tta_flip"], calibration=site.get(CALIBRATION_FILE))


def sigmoid(x):
    """float32 logits -> probabilities; exp overflows to inf for very negative logits, giving 0."""
    with np.errstate(over="ignore"):
        return (1 / (1 + np.exp(-x))).astype(np.float32)


class OnnxEmbedder:
    """A CNN's embedding (S, D) float32 of uint8 (S, 3, H, W) in chunks of ``chunk`` slices."""

    group = 0  # one study per pass, as the torch runtime on a CPU (rsna_pe.infer.embed)

    def __init__(self, cnn, chunk=256, tta_flip=False):
        if tta_flip and cnn.logits_in_embedding:
            # the mirrored slice's left/right logits are the other side's: averaging mixes them
            raise ConfigError("tta_flip cannot be used with a CNN whose embedding carries its exam logits "
                              "(model.exam_targets.in_embedding); set tta_flip=false")
        self.session, self.chunk, self.tta_flip = cnn.session, int(chunk), tta_flip

    def _run(self, x):
        return self.session.run(None, {CNN_INPUTS[0]: np.ascontiguousarray(x)})[0]

    def embed(self, imgs):
        outs = []
        for start in range(0, len(imgs), self.chunk):
            x = imgs[start:start + self.chunk]
            y = self._run(x)
            if self.tta_flip:
                y = (y + self._run(x[..., ::-1])) / 2
            outs.append(y)
        return np.concatenate(outs) if len(outs) > 1 else outs[0]


class OnnxHead:
    """A head's (image logits (B, S max), exam logits (B, 9)) of a batch of series, each run on
    its own (export fixes the batch at one series; padding beyond a series' length is zero, as
    the torch head's)."""

    def __init__(self, rnn):
        self.session = rnn.session

    def run(self, feats):
        """[float32 (S_i, D)] -> their logits."""
        img = np.zeros((len(feats), max(len(f) for f in feats)), np.float32)
        exam = []
        for b, f in enumerate(feats):
            i, e = self.session.run(None, {HEAD_INPUTS[0]: np.ascontiguousarray(f[None], dtype=np.float32),
                                           HEAD_INPUTS[1]: np.array([len(f)], dtype=np.int64)})
            img[b, :len(f)] = i[0]
            exam.append(e[0])
        return img, np.stack(exam)


class OnnxEnsemble(Ensemble):
    """The Ensemble (rsna_pe.infer.ensemble) with its pairs as ONNX Runtime sessions."""

    runtime = "onnx"
    explains = False  # activation maps need torch

    @classmethod
    def from_sessions(cls, models, prior, sources, chunk=256, tta_flip=False, calibration=None):
        """From [(cnn OnnxModel, its JSON's config and record, rnn OnnxModel, where)]."""
        self = cls.__new__(cls)
        self._set_up(models, prior, sources, HOST, True, dict(chunk=chunk, tta_flip=tta_flip))
        self.calibration = calibration
        return self

    def _member(self, cnn, rnn, device, embed_kw):
        return OnnxEmbedder(cnn, **embed_kw), OnnxHead(rnn)

    def member_outputs_many(self, studies):
        """As Ensemble.member_outputs_many, in numpy: each CNN embeds the studies' slices in one
        pass, its head takes them as a padded batch."""
        lengths = [len(next(iter(images.values()))) for images in studies]
        cut = np.cumsum(lengths)[:-1]
        stacks = {spec: np.concatenate([images[spec] for images in studies]) if len(studies) > 1
                  else studies[0][spec] for spec in self.specs}
        img_probs, exam_probs = [], []
        for spec, embedder, head in self.members:
            img_logit, exam_logit = head.run(np.split(embedder.embed(stacks[spec]), cut))
            img_probs.append(sigmoid(img_logit))
            exam_probs.append(sigmoid(exam_logit))
        img, exam = np.stack(img_probs, 1), np.stack(exam_probs, 1)  # (B, pairs, S max), (B, pairs, 9)
        return [[(img[b, m, :n], exam[b, m]) for m in range(len(self.members))] for b, n in enumerate(lengths)]
