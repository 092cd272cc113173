"""Stage 6: the head over a series' CNN embeddings (docs/training.md).

``RNNHead`` turns one series' per-slice embeddings (z order) into per-slice
``pe_present_on_image`` logits and the 9 exam logits; ``model.head`` may swap its LSTMs for GRUs
or the whole stack for head_options.TransformerHead (options, off by default). Configs and
checkpoints call this network ``rnn`` whichever head it is.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..core.errors import PipelineError
from ..core.labels import N_EXAM
from .head_options import SequenceHead, attend, build_transformer, logit_pool, two_layer


def reverse_within(x, lengths):
    """Reverse each series of a right-padded batch (B, S, ...) within its own length; the
    padding stays at the end. Its own inverse."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    n = lengths[:, None]
    idx = torch.where(steps < n, n - 1 - steps, steps)
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand_as(x))


class RNNHead(SequenceHead):
    """Two stacked bidirectional LSTMs (GRUs with ``cell='gru'``), a per-slice head and an
    attention-pooled exam head. ``neighbour_diff`` feeds each slice's features with their
    differences to its neighbours (3x the input width, head_options.neighbour_diff); ``cnn_logits``
    adds the pooled CNN logits to the exam logits (head_options.LogitPool).

    ``forward(emb (B, S, D), lengths (B,)) -> (image_logits (B, S), exam_logits (B, 9))``.
    A series' outputs do not depend on what it is batched with: no LSTM step reads padding
    and the attention is masked; logits at padded positions are zero and must be ignored.

    Two ways to run the LSTMs, same weights, same outputs: ``packed`` (pack_padded_sequence,
    the textbook way) and ``layered`` (layer by layer on the padded batch, the backward
    direction over each series reversed within its length). Packed is several times slower
    than padding on both CPU and GPU (benchmarks/bench_rnn.py, against plain padded LSTMs on an
    H200 at the recipe's sizes: packed 5.5x the time, layered 1.12x), so ``auto`` means
    ``layered``.
    """

    IMPLS = ("auto", "packed", "layered")
    CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}

    def __init__(self, input_dim=2560, hidden=128, layers=3, dropout=0.5, impl="auto", cell="lstm",
                 neighbour_diff=False, cnn_logits=0):
        super().__init__()
        if impl not in self.IMPLS:
            raise PipelineError(f"model.impl '{impl}': choose from {', '.join(self.IMPLS)}")
        width = 2 * hidden  # bidirectional outputs, 256 in the recipe
        self.cell = self.CELLS[cell]

        def lstm(n_in):
            return self.cell(n_in, hidden, num_layers=layers, bias=False, batch_first=True,
                             bidirectional=True, dropout=dropout if layers > 1 else 0.0)

        self.input_dim, self.impl, self.neighbour_diff = input_dim, impl, neighbour_diff
        self.lstm1 = lstm(input_dim * (3 if neighbour_diff else 1))
        self.lstm2 = lstm(width)
        self.image_head = two_layer(width, 1, dropout)
        self.attention1 = nn.Linear(width, 1)
        self.attention2 = nn.Linear(width, 1)
        self.exam_head = two_layer(width, N_EXAM, dropout)
        self.logit_pool = logit_pool(cnn_logits, input_dim)
        self._templates = {}  # weightless one-layer LSTMs/GRUs that run one layer of lstm1/lstm2

    _attend = staticmethod(attend)

    def _one_layer(self, lstm, layer, suffix, x):
        """One direction of one layer of ``lstm`` on a padded batch, with that layer's weights."""
        w_ih = getattr(lstm, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(lstm, f"weight_hh_l{layer}{suffix}")
        key = (w_ih.shape[1], w_ih.dtype)
        if key not in self._templates:
            self._templates[key] = self.cell(w_ih.shape[1], lstm.hidden_size, bias=False, batch_first=True,
                                             device="meta", dtype=w_ih.dtype)
        return torch.func.functional_call(self._templates[key], {"weight_ih_l0": w_ih, "weight_hh_l0": w_hh},
                                          (x,))[0]

    def _layered(self, lstm, x, lengths):
        """``lstm`` (bidirectional LSTM or GRU, no bias) over a right-padded batch, as if packed."""
        for layer in range(lstm.num_layers):
            if layer:
                x = F.dropout(x, lstm.dropout, self.training)
            fwd = self._one_layer(lstm, layer, "", x)  # padding comes after the real steps
            rev = self._one_layer(lstm, layer, "_reverse", reverse_within(x, lengths))
            bwd = reverse_within(rev, lengths)
            x = torch.cat([fwd, bwd], dim=-1)
        return x

    def _run_lstms(self, emb, lengths, mask):
        impl = self.impl
        if impl == "auto":
            impl = "layered"
        if impl == "layered":
            o1 = self._layered(self.lstm1, emb, lengths)
            o2 = self._layered(self.lstm2, o1, lengths)
            m = mask.unsqueeze(-1).to(o1.dtype)
            return o1 * m, o2 * m
        steps = emb.shape[1]
        # pack_padded_sequence wants CPU int64 lengths; enforce_sorted=False sorts internally.
        packed = pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        p1, _ = self.lstm1(packed)
        p2, _ = self.lstm2(p1)  # packed in, packed out: the second LSTM never sees padding
        o1, _ = pad_packed_sequence(p1, batch_first=True, total_length=steps)
        o2, _ = pad_packed_sequence(p2, batch_first=True, total_length=steps)
        return o1, o2

    def forward(self, emb, lengths):
        emb, lengths, mask, skip = self.inputs(emb, lengths)
        o1, o2 = self._run_lstms(emb, lengths, mask)
        image_logits = self.image_head(o1 + o2).squeeze(-1)
        pooled = self._attend(self.attention1, o1, mask) + self._attend(self.attention2, o2, mask)
        return image_logits, self.exam_head(pooled) + skip


HEADS = ("lstm", "gru", "transformer")


def build_head(model_cfg):
    """The head from a config's ``model`` block: ``head`` lstm (the recipe), gru or transformer."""
    m = dict(model_cfg)
    head, diff = str(m.get("head", "lstm")), bool(m.get("neighbour_diff", False))
    cnn_logits = int(m.get("cnn_logits", 0))
    input_dim, dropout = int(m.get("input_dim", 2560)), float(m.get("dropout", 0.5))
    if head not in HEADS:
        raise PipelineError(f"model.head '{head}': choose from {', '.join(HEADS)}")
    if head == "transformer":
        return build_transformer(m, input_dim, dropout, diff, cnn_logits)
    return RNNHead(input_dim=input_dim, hidden=int(m.get("hidden", 128)), layers=int(m.get("layers", 3)),
                   dropout=dropout, impl=str(m.get("impl", "auto")), cell=head, neighbour_diff=diff,
                   cnn_logits=cnn_logits)
