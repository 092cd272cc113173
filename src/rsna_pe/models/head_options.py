"""Options of the stage-6 head, each off unless a config turns it on (docs/training.md).

The recurrent stack itself is ``head.RNNHead`` (LSTM by default, GRU on ``model.head: gru``).
Here: what both heads share (``SequenceHead``: the padding mask, the neighbour differences of
``model.neighbour_diff``, the CNN-logit pooling of ``model.cnn_logits``; masked attention pooling;
the two-layer output block) and the transformer encoder of ``model.head: transformer``. The head
losses are in rsna_pe.models.losses.
"""
import math

import torch
from torch import nn

from ..core.errors import PipelineError
from ..core.labels import N_EXAM


def slice_mask(lengths, steps, device=None):
    """(B, steps) bool, True at real slices."""
    lengths = torch.as_tensor(lengths, device=device)
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]


def attend(score_layer, out, mask):
    """Softmax over the real slices only, then the weighted sum of ``out``."""
    scores = score_layer(out).squeeze(-1).masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=1)
    return torch.bmm(weights.unsqueeze(1), out).squeeze(1)


def neighbour_diff(x, lengths):
    """(B, S, D) -> (B, S, 3D): each slice's features, then their differences to the previous
    and to the next slice of its own series; an edge slice is its own neighbour (difference 0),
    so the last real slice never reads padding."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    last = (lengths.to(x.device) - 1).clamp(min=0)[:, None]
    prev = (steps - 1).clamp(min=0).expand(len(x), -1)
    nxt = torch.minimum(steps + 1, last)

    def take(idx):
        return x.gather(1, idx[..., None].expand_as(x))

    return torch.cat([x, x - take(prev), x - take(nxt)], dim=-1)


class LogitPool(nn.Module):
    """``model.cnn_logits: n``: the last n embedding dims are the CNN's own logits (image first,
    rsna_pe.models.exam_targets.in_embedding). Their max, mean and PE-weighted mean (weights: the
    CNN's image probability) over a series' real slices feed one linear map added to the exam
    logits. Zero-initialised, so training starts from the plain head. A recurrent head trained
    on a few hundred exams did not learn these poolings from the sequence (docs/training.md)."""

    def __init__(self, n):
        super().__init__()
        self.n = int(n)
        self.linear = nn.Linear(3 * self.n, N_EXAM)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, emb, mask):
        z = emb[..., -self.n:].to(self.linear.weight.dtype)
        m = mask.unsqueeze(-1).to(z.dtype)
        mean = (z * m).sum(1) / m.sum(1).clamp(min=1)
        top = z.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        p = torch.sigmoid(z[..., :1]) * m
        weighted = (p * z).sum(1) / p.sum(1).clamp(min=1e-6)
        return self.linear(torch.cat([top, mean, weighted], dim=-1))


def logit_pool(cnn_logits, input_dim):
    """The LogitPool of ``model.cnn_logits`` (None when 0)."""
    n = int(cnn_logits or 0)
    if not 0 <= n < input_dim:
        raise PipelineError(f"model.cnn_logits {n}: must be 0 (off) or the number of CNN logits at "
                            f"the end of the {input_dim}-wide embedding (1 + exam_targets labels)")
    return LogitPool(n) if n else None


class SequenceHead(nn.Module):
    """The input side every stage-6 head shares; a subclass sets ``neighbour_diff`` (bool) and
    ``logit_pool`` (a LogitPool, or None)."""

    def inputs(self, emb, lengths):
        """-> (emb, lengths, mask, skip): lengths as int64 on emb's device, the (B, S) mask of
        real slices, the pooled CNN logits to add to the exam logits (0 without
        ``cnn_logits``), and emb widened by its neighbour differences with ``neighbour_diff``."""
        lengths = torch.as_tensor(lengths, dtype=torch.int64, device=emb.device)
        mask = slice_mask(lengths, emb.shape[1])
        skip = self.logit_pool(emb, mask) if self.logit_pool is not None else 0
        if self.neighbour_diff:
            emb = neighbour_diff(emb, lengths)
        return emb, lengths, mask, skip


def sinusoidal_positions(steps, width, device=None, dtype=torch.float32):
    """The fixed sine/cosine position code of "Attention is all you need", (steps, width)."""
    pos = torch.arange(steps, device=device, dtype=torch.float64)[:, None]
    freq = torch.exp(torch.arange(0, width, 2, device=device, dtype=torch.float64) * (-math.log(1e4) / width))
    code = torch.zeros(steps, width, device=device, dtype=torch.float64)
    code[:, 0::2] = torch.sin(pos * freq)
    code[:, 1::2] = torch.cos(pos * freq)[:, : width // 2]
    return code.to(dtype)


def two_layer(width, n_out, dropout):
    """Linear -> ReLU -> Dropout -> Linear, no biases: the per-slice and the exam head."""
    return nn.Sequential(nn.Linear(width, width, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(width, n_out, bias=False))


class TransformerHead(SequenceHead):
    """A small transformer encoder over a series' slices, with the recurrent head's outputs.

    ``forward(emb (B, S, D), lengths (B,)) -> (image_logits (B, S), exam_logits (B, 9))``:
    a linear projection to ``width`` plus a position code (``sinusoidal`` or ``learned`` up to
    ``max_len`` slices), ``layers`` pre-norm encoder layers whose attention skips the padding
    (``src_key_padding_mask``), then the per-slice head and one attention-pooled exam head.
    Logits at padded positions are zero and must be ignored.
    """

    POSITIONS = ("sinusoidal", "learned")

    def __init__(self, input_dim=2560, width=256, layers=2, heads=4, ff=512, dropout=0.5,
                 attn_dropout=0.1, position="sinusoidal", max_len=2048, neighbour_diff=False,
                 cnn_logits=0):
        super().__init__()
        if position not in self.POSITIONS:
            raise PipelineError(f"model.transformer.position '{position}': choose from {', '.join(self.POSITIONS)}")
        if width % heads or width % 2:
            raise PipelineError(f"model.transformer.width {width}: must be even and divisible by heads ({heads})")
        self.input_dim, self.width, self.max_len = input_dim, width, max_len
        self.neighbour_diff, self.position = neighbour_diff, position
        self.proj = nn.Linear(input_dim * (3 if neighbour_diff else 1), width)
        self.positions = nn.Embedding(max_len, width) if position == "learned" else None
        layer = nn.TransformerEncoderLayer(width, heads, ff, attn_dropout, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)
        self.image_head = two_layer(width, 1, dropout)
        self.attention = nn.Linear(width, 1)
        self.exam_head = two_layer(width, N_EXAM, dropout)
        self.logit_pool = logit_pool(cnn_logits, input_dim)

    def _position_code(self, steps, x):
        if self.positions is None:
            return sinusoidal_positions(steps, self.width, x.device, x.dtype)
        if steps > self.max_len:
            raise PipelineError(f"a series of {steps} slices is longer than model.transformer.max_len "
                                f"({self.max_len}) of the learned position code")
        return self.positions.weight[:steps]

    def forward(self, emb, lengths):
        emb, lengths, mask, skip = self.inputs(emb, lengths)
        x = self.proj(emb) + self._position_code(emb.shape[1], emb)
        x = self.encoder(x, src_key_padding_mask=~mask) * mask.unsqueeze(-1).to(x.dtype)
        return self.image_head(x).squeeze(-1), self.exam_head(attend(self.attention, x, mask)) + skip


def build_transformer(model_cfg, input_dim, dropout, diff, cnn_logits=0):
    """The transformer head from a config's ``model`` block (its ``transformer`` sub-block)."""
    t = dict(model_cfg.get("transformer") or {})
    known = {"width", "layers", "heads", "ff", "attn_dropout", "position", "max_len"}
    if set(t) - known:
        raise PipelineError(f"unknown model.transformer key(s) {sorted(set(t) - known)} "
                            f"(known: {', '.join(sorted(known))})")
    return TransformerHead(input_dim=input_dim, width=int(t.get("width", 256)), layers=int(t.get("layers", 2)),
                           heads=int(t.get("heads", 4)), ff=int(t.get("ff", 512)), dropout=dropout,
                           attn_dropout=float(t.get("attn_dropout", 0.1)),
                           position=str(t.get("position", "sinusoidal")), max_len=int(t.get("max_len", 2048)),
                           neighbour_diff=diff, cnn_logits=cnn_logits)
