"""A bundle's models as ONNX, for ONNX Runtime without torch (rsna_pe.infer.onnx_runtime).

Each model is exported from the very weights the bundle holds, as loading builds it
(rsna_pe.infer.bundle.add_onnx), and checked before it is written: ONNX Runtime runs the
exported bytes on random input and on CT-like input (a rendered synthetic series, rsna_pe.synthetic,
through the CNN's own input path: windows, its JPEG codec, its input kind and size), and the
largest absolute difference to the torch model's outputs must stay within ``TOLERANCE``.

- A CNN becomes its ``embedding`` (uint8 images (N, 3, H, W) -> float32 (N, D)), any N, through
  the torch.export-based exporter (``dynamo=True``).
- A head becomes its forward on one series (embeddings (1, S, D) float32, lengths (1,) int64 ->
  image logits (1, S), exam logits (1, 9)), any S. With torch 2.14
  the torch.export-based exporter fixes an LSTM's sequence length at the example's (measured:
  wrong outputs at other lengths), so recurrent heads go through the TorchScript exporter, each
  layer and direction of the recurrent stack as one ONNX LSTM (or GRU) node; the transformer
  head through the torch.export-based one (tracing fixes its attention's shapes).
- No int8 models: ONNX Runtime's quantisation of the CNNs was faster, but moved the demo's test
  score by more than 1% for most calibrations tried (docs/speed.md; benchmarks/bench_cpu_inference.py
  measures it).
"""
import contextlib
import copy
import io
import logging
import types
import warnings
from importlib import metadata

import numpy as np
import torch
from torch import nn

from ..core.errors import PipelineError
from ..data.dicom import hu_to_image
from ..data.model_input import input_kind, model_input, through_codec
from ..synthetic import plan, render_series
from .bundle_files import ONNX_SUFFIX
from .onnx_runtime import CNN_INPUTS, CNN_OUTPUTS, HEAD_INPUTS, HEAD_OUTPUTS, session_of
from .pairs import jpeg_settings

log = logging.getLogger(__name__)

OPSET = 18
TOLERANCE = 1e-4
EXPORTERS = {"cnn": "torch.onnx.export(dynamo=True)", "rnn": "torch.onnx.export(dynamo=False), TorchScript"}
MAX_SLICES = 4096  # the longest series a transformer head's ONNX model takes (the real data's is 1,083)
SAMPLE_SLICES, SAMPLE_MATRIX = 6, 256  # the CT-like check series: enough for a sequence, quick to render


@contextlib.contextmanager
def _quiet():
    """The exporters' chatter (deprecation notes, tracer warnings about shape checks, progress
    lines): the comparison after each export is what tells whether it is right."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


class _Embedding(nn.Module):
    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, images):
        return self.cnn.embedding(images)


def ct_like_input(fields, where):
    """uint8 (SAMPLE_SLICES, 3, size, size): a synthetic positive study's slices as a CNN of
    checkpoint fields ``fields`` (config, record) sees them at inference (whole slices)."""
    jpeg_size, quality, _ = jpeg_settings(fields, where)
    spec = plan(0, 1, slices=(SAMPLE_SLICES, SAMPLE_SLICES), matrix=SAMPLE_MATRIX, seed=0, compressed_fraction=0,
                odd_matrix_fraction=0, odd_rescale_fraction=0, positive_fraction=1.0)[0]
    windowed = np.stack([hu_to_image(hu.astype(np.float32), jpeg_size).transpose(2, 0, 1)
                         for _, hu in render_series(spec)])
    return model_input(through_codec(windowed, quality), input_kind(fields["config"]),
                       int(fields["config"]["dataset"]["size"]))


def _differs(where, what, got, want, masks=()):
    """The largest absolute difference of ONNX Runtime's outputs from torch's (each output where
    its mask, if any, is true); past the tolerance (or not finite) a one-line error naming the
    model."""
    masks = list(masks) + [None] * (len(want) - len(masks))
    worst = max(float(np.abs(np.asarray(g, np.float64) - w.detach().numpy())[m if m is not None else ...].max())
                for g, w, m in zip(got, want, masks))
    if not worst <= TOLERANCE:
        raise PipelineError(f"{where}: its ONNX export differs from the torch model by {worst:.3g} on {what} "
                            f"input (tolerance {TOLERANCE}); not written")
    return worst


def cnn_onnx(cnn, images, where):
    """-> (ONNX bytes of a CNN's embedding, its largest difference on the checks, its torch
    embeddings of ``images``)."""
    net = _Embedding(cnn).eval()
    size = images.shape[-1]
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=gen)
    with _quiet():
        program = torch.onnx.export(net, (example,), dynamo=True, opset_version=OPSET, verbose=False,
                                    input_names=list(CNN_INPUTS), output_names=list(CNN_OUTPUTS),
                                    dynamic_shapes=({0: torch.export.Dim("slices", min=1)},))
    data = program.model_proto.SerializeToString()
    session = session_of(data, where, "cnn", threads=1)
    worst, feats = 0.0, None
    for what, x in (("random", torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8, generator=gen)),
                    ("CT-like", torch.from_numpy(np.ascontiguousarray(images)))):
        with torch.inference_mode():
            want = net(x)
        worst = max(worst, _differs(where, what, session.run(None, {CNN_INPUTS[0]: x.numpy()}), [want]))
        feats = want
    return data, worst, feats


def _traceable(head):
    """A copy of ``head`` whose recurrent layers run as plain one-layer modules (sharing its
    weights) that the TorchScript exporter turns into ONNX LSTM/GRU nodes; the head's own
    ``_one_layer`` builds its templates from weight shapes, which tracing turns into tensors."""
    head = copy.deepcopy(head).eval()
    if not hasattr(head, "_one_layer"):  # the transformer head: nothing to replace
        return head
    head.impl = "layered"  # the packed way cannot be exported (pack and unpack must pair up)
    cells = {}
    for lstm in (head.lstm1, head.lstm2):
        for layer in range(lstm.num_layers):
            for suffix in ("", "_reverse"):
                w_ih, w_hh = (getattr(lstm, f"weight_{k}_l{layer}{suffix}") for k in ("ih", "hh"))
                cell = head.cell(w_ih.shape[1], lstm.hidden_size, bias=False, batch_first=True)
                cell.weight_ih_l0, cell.weight_hh_l0 = w_ih, w_hh
                cells[id(lstm), layer, suffix] = cell.eval()
    head._one_layer = types.MethodType(lambda self, lstm, layer, suffix, x: cells[id(lstm), layer, suffix](x)[0],
                                       head)
    return head


def head_onnx(head, feats, where):
    """-> (ONNX bytes of a head for one series at a time, its largest difference on the checks);
    ``feats``: its CNN's embeddings of the CT-like series. One series: tracing keeps a batch
    size as a constant (the head options' neighbour differences, the transformer's attention),
    and a series' outputs do not depend on what it is batched with."""
    recurrent = hasattr(head, "_one_layer")
    head = _traceable(head)
    gen = torch.Generator().manual_seed(0)
    width = feats.shape[1]
    example = (torch.rand((1, 5, width), generator=gen), torch.tensor([5]))
    names = dict(opset_version=OPSET, input_names=list(HEAD_INPUTS), output_names=list(HEAD_OUTPUTS))
    with _quiet():
        if recurrent:
            buf = io.BytesIO()
            torch.onnx.export(head, example, buf, dynamo=False, dynamic_axes={
                HEAD_INPUTS[0]: {1: "slices"}, HEAD_OUTPUTS[0]: {1: "slices"}}, **names)
            data = buf.getvalue()
        else:  # the transformer head: no recurrent layer, and tracing would fix its attention's shapes
            data = torch.onnx.export(head, example, dynamo=True, verbose=False, **names, dynamic_shapes=(
                {1: torch.export.Dim("slices", min=1, max=MAX_SLICES)}, None)).model_proto.SerializeToString()
    session = session_of(data, where, "rnn", threads=1)
    worst = 0.0
    for what, series in (("random", [torch.rand((n, width), generator=gen) for n in (9, 4, 1)]),
                         ("CT-like", [feats, feats[:len(feats) // 2 + 1]])):
        for x in series:
            lengths = torch.tensor([len(x)])
            with torch.inference_mode():
                want = head(x[None], lengths)
            try:
                got = session.run(None, {HEAD_INPUTS[0]: x[None].numpy(), HEAD_INPUTS[1]: lengths.numpy()})
            except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own error types
                raise PipelineError(f"{where}: its ONNX export fails on a {what} series of {len(x)} slices "
                                    f"({(str(e).splitlines() or [''])[0][:120]}); not written") from None
            worst = max(worst, _differs(where, what, got, want))
    return data, worst, EXPORTERS["rnn" if recurrent else "cnn"]


def export_pairs(bundle, pairs, load):
    """The ONNX files {name: bytes} of ``pairs`` [{cnn, rnn}] and the manifest's ``onnx``
    section; ``load(name, kind)`` -> (torch model, its checkpoint fields) as the bundle builds it."""
    files, models, done = {}, {}, {}
    for pair in pairs:
        name = pair["cnn"]
        if name not in done:
            cnn, fields = load(name, "cnn")
            where = f"{bundle}/{name}{ONNX_SUFFIX}"
            images = ct_like_input(fields, where)
            data, worst, feats = cnn_onnx(cnn, images, where)
            done[name] = feats
            files[name + ONNX_SUFFIX] = data
            models[name] = {"file": name + ONNX_SUFFIX, "max_abs_diff": worst, "exporter": EXPORTERS["cnn"],
                            "logits_in_embedding": bool(getattr(cnn, "logits_in_embedding", False))}
            log.info("%s: exported, largest difference %.2g", where, worst)
        if pair["rnn"] not in models:
            head, _ = load(pair["rnn"], "rnn")
            where = f"{bundle}/{pair['rnn']}{ONNX_SUFFIX}"
            data, worst, exporter = head_onnx(head, done[pair["cnn"]], where)
            files[pair["rnn"] + ONNX_SUFFIX] = data
            models[pair["rnn"]] = {"file": pair["rnn"] + ONNX_SUFFIX, "max_abs_diff": worst, "exporter": exporter}
            log.info("%s: exported, largest difference %.2g", where, worst)
    versions = {k: _version(k) for k in ("torch", "onnx", "onnxscript", "onnxruntime")}
    return files, {"opset": OPSET, "versions": versions, "tolerance": TOLERANCE,
                   "models": models}


def _version(package):
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
