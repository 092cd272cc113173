"""Stage 6: the LSTM head over a series' CNN embeddings (docs/training.md).

``RNNHead`` turns one series' per-slice embeddings (z order) into per-slice
``pe_present_on_image`` logits and the 9 exam logits; ``model.head`` may swap its LSTMs for
GRUs or the whole stack for heads.TransformerHead (options, off by default). ``RNNTask`` plugs
it into the shared trainer: datasets over the dumped embeddings of one CNN run and fold, the
loss, validation metrics, and the out-of-fold predictions written after training.
"""
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.data import Dataset

from . import labels, metric, paths, provenance
from .errors import PipelineError
from .folds import read_fold_csv, split_by_fold
from .heads import attend, build_transformer, logit_pool, metric_loss, neighbour_diff, slice_mask
from .io import atomic_to_csv, atomic_write_text
from .labels import EXAM_LABELS, LABELS, study_series
from .tasks import Task

log = logging.getLogger(__name__)

N_EXAM = len(EXAM_LABELS)


# ----------------------------------------------------------------------------- model

def reverse_within(x, lengths):
    """Reverse each series of a right-padded batch (B, S, ...) within its own length; the
    padding stays at the end. Its own inverse."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]
    n = lengths[:, None]
    idx = torch.where(steps < n, n - 1 - steps, steps)
    return x.gather(1, idx.view(*idx.shape, *[1] * (x.dim() - 2)).expand_as(x))


class RNNHead(nn.Module):
    """Two stacked bidirectional LSTMs (GRUs with ``cell='gru'``), a per-slice head and an
    attention-pooled exam head. ``neighbour_diff`` feeds each slice's features with their
    differences to its neighbours (3x the input width, heads.neighbour_diff); ``cnn_logits``
    adds the pooled CNN logits to the exam logits (heads.LogitPool).

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
        self.image_head = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(width, 1, bias=False))
        self.attention1 = nn.Linear(width, 1)
        self.attention2 = nn.Linear(width, 1)
        self.exam_head = nn.Sequential(
            nn.Linear(width, width, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(width, N_EXAM, bias=False))
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
        lengths = torch.as_tensor(lengths, dtype=torch.int64, device=emb.device)
        mask = slice_mask(lengths, emb.shape[1])
        skip = self.logit_pool(emb, mask) if self.logit_pool is not None else 0
        if self.neighbour_diff:
            emb = neighbour_diff(emb, lengths)
        o1, o2 = self._run_lstms(emb, lengths, mask)
        image_logits = self.image_head(o1 + o2).squeeze(-1)
        pooled = self._attend(self.attention1, o1, mask) + self._attend(self.attention2, o2, mask)
        return image_logits, self.exam_head(pooled) + skip


HEADS = ("lstm", "gru", "transformer")


def build_rnn(model_cfg):
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


def rnn_loss(image_logits, exam_logits, image_labels, exam_labels, lengths):
    """Mean of the image-level BCE over real slices and the exam-level BCE over 9 labels."""
    mask = slice_mask(lengths, image_logits.shape[1], device=image_logits.device)
    image = F.binary_cross_entropy_with_logits(image_logits[mask].float(), image_labels[mask].float())
    exam = F.binary_cross_entropy_with_logits(exam_logits.float(), exam_labels.float())
    return (image + exam) / 2


# bce: the recipe's mean of the two BCEs; metric: the competition's weighted log loss
LOSSES = {"bce": rnn_loss, "metric": metric_loss}


# ----------------------------------------------------------------------------- data

class EmbeddingDataset(Dataset):
    """One item per series: its dumped embeddings (S, D) in z order, labels (S, 10), SOP ids."""

    def __init__(self, root, series):
        self.root = Path(root)
        self.series = list(series)  # [(study, series), ...]
        missing = [s for s in self.series if not self.file(s).is_file()]
        if missing:
            raise PipelineError(f"{len(missing)} series have no dumped embeddings, e.g. "
                                f"{self.file(missing[0])} (run dump_embeddings for this CNN run and fold)")

    def file(self, item):
        return paths.series_file(self.root, *item)

    def __len__(self):
        return len(self.series)

    def __getitem__(self, i):
        study, series = self.series[i]
        path = self.file(self.series[i])
        try:
            with np.load(path, allow_pickle=False) as z:
                emb, labels, sop = z["embeddings"], z["labels"], z["sop"]
        except (OSError, KeyError, ValueError) as e:
            raise PipelineError(f"{path}: unreadable embeddings ({type(e).__name__}: {e})") from None
        if emb.ndim != 2 or len(emb) == 0 or labels.shape != (len(emb), len(LABELS)) or len(sop) != len(emb):
            raise PipelineError(f"{path}: expected embeddings (S, D), labels (S, {len(LABELS)}), "
                                f"sop (S,) with S > 0; got {emb.shape}, {labels.shape}, {sop.shape}")
        return {"emb": torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)),
                "labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
                "sop": sop.astype(str), "study": study, "series": series}


def collate(items):
    """Pad to the longest series in this batch; keep lengths, SOP and study ids."""
    lengths = torch.tensor([len(it["emb"]) for it in items], dtype=torch.int64)
    steps, dim = int(lengths.max()), items[0]["emb"].shape[1]
    emb = torch.zeros(len(items), steps, dim, dtype=torch.float32)
    image_labels = torch.zeros(len(items), steps, dtype=torch.float32)
    for i, it in enumerate(items):
        n = len(it["emb"])
        emb[i, :n] = it["emb"]
        image_labels[i, :n] = it["labels"][:, -1]
    # Exam labels repeat on every slice of a study; take the first row's.
    exam_labels = torch.stack([it["labels"][0, :N_EXAM] for it in items])
    return {"emb": emb, "lengths": lengths, "image_labels": image_labels,
            "exam_labels": exam_labels, "sop": [it["sop"] for it in items],
            "study": [it["study"] for it in items], "series": [it["series"] for it in items]}


# ----------------------------------------------------------------------------- task

def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def _bce_logits(logits, target):
    """Mean binary cross-entropy from logits (numpy, numerically stable)."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    return float(np.mean(np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x))))) if x.size else float("nan")


def _records(df):
    """A per-label table as JSON-ready rows; NaN (e.g. an AUC of one class) becomes null."""
    return [{k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in row.items()}
            for row in df.to_dict(orient="records")]


def merge_outputs(outs):
    """Every batch's ``out`` -> one record per study, in first-seen order. A study seen twice
    (a sampler that pads ranks to equal length repeats a few) counts once."""
    seen, rec = set(), {k: [] for k in ("study", "sop", "exam_logits", "image_logits",
                                        "exam_true", "image_true")}
    for out in outs:
        for i, study in enumerate(out["study"]):
            if study in seen:
                continue
            seen.add(study)
            for k in rec:
                rec[k].append(out[k][i])
    rec["exam_logits"] = np.asarray(rec["exam_logits"], dtype=np.float64).reshape(-1, N_EXAM)
    rec["exam_true"] = np.asarray(rec["exam_true"], dtype=np.float64).reshape(-1, N_EXAM)
    return rec


class RNNTask(Task):
    """The trainer's task for ``network: rnn`` (see trainer.py for the engine)."""

    collate_fn = staticmethod(collate)

    def __init__(self, cfg):
        self.cfg = cfg
        ds = cfg["dataset"]
        self.fold, self.k_fold = int(ds["fold"]), int(ds["k_fold"])
        self.cnn_run = str(ds["cnn_run"])
        self.dump = paths.dump_dir(ds["dump_root"], self.cnn_run, self.fold)
        self._split = None
        loss = (cfg.get("loss") or {}).get("name", "bce")
        if loss not in LOSSES:  # a typo must not pass silently
            raise PipelineError(f"loss.name '{loss}': the LSTM head trains with {' or '.join(LOSSES)} "
                                "(the CNN run, dataset.cnn_run, carries the focal/bce choice)")
        self.loss_fn = LOSSES[loss]

    # -- data
    def split(self):
        """(train series, val series, label prior of the training part), from the fold csv."""
        if self._split is None:
            csv = paths.fold_csv(self.cfg["dataset"]["data_dir"], self.cfg["jpeg_size"], crop=paths.crop_of(self.cfg))
            df = read_fold_csv(csv, LABELS)
            train_df, val_df = split_by_fold(df, self.fold, self.k_fold)
            train, val = study_series(train_df, csv), study_series(val_df, csv)
            if not train or not val:
                raise PipelineError(f"{csv}: fold {self.fold} of {self.k_fold} "
                                    f"leaves {len(train)} training and {len(val)} validation series")
            self._split = (train, val, metric.prior_prediction(train_df, source=csv))
        return self._split

    def datasets(self):
        train, val, _ = self.split()
        train_ds, val_ds = EmbeddingDataset(self.dump, train), EmbeddingDataset(self.dump, val)
        dim = train_ds[0]["emb"].shape[1]
        want = int(self.cfg["model"]["input_dim"])
        if dim != want:
            raise PipelineError(f"{train_ds.file(train[0])}: embeddings have {dim} features, "
                                f"config model.input_dim is {want}")
        self._check_logits()
        log.info("rnn fold %d: %d train / %d val series from %s", self.fold, len(train), len(val), self.dump)
        return train_ds, val_ds

    def _check_logits(self):
        """``model.cnn_logits`` must match the CNN logits the dump's record says its embeddings
        end with (a dump without them would have the head pool arbitrary features)."""
        n = int(self.cfg["model"].get("cnn_logits", 0))
        if not n:
            return
        rec = provenance.load(self.dump) or {}
        logits = (rec.get("params") or {}).get("logits") or []
        if len(logits) != n:
            raise PipelineError(f"{provenance.record_path(self.dump)}: the embeddings end with {len(logits)} CNN "
                                f"logits, config model.cnn_logits is {n} (dump a CNN with "
                                "model.exam_targets.in_embedding, or set model.cnn_logits to match)")

    def build_model(self):
        return build_rnn(self.cfg["model"])

    @staticmethod
    def output_labels(cfg=None):
        """Exam logits in EXAM_LABELS order, then the image logit: LABELS."""
        return list(labels.LABELS)

    @staticmethod
    def input_sets(cfg):
        """Folders of the records a run is made from: the dump and the fold csv."""
        ds = cfg["dataset"]
        return {"dump": paths.dump_dir(ds["dump_root"], ds["cnn_run"], ds["fold"]),
                "fold_csv": paths.fold_csv(ds["data_dir"], cfg["jpeg_size"], crop=paths.crop_of(cfg)).parent}

    def extra_state(self):
        return {"cnn_run": self.cnn_run, "prior": self.split()[2]}

    # -- steps
    def step(self, model, batch, device):
        emb = batch["emb"].to(device, non_blocking=True)
        lengths = batch["lengths"]
        image_labels = batch["image_labels"].to(device, non_blocking=True)
        exam_labels = batch["exam_labels"].to(device, non_blocking=True)
        image_logits, exam_logits = model(emb, lengths)
        loss = self.loss_fn(image_logits, exam_logits, image_labels, exam_labels, lengths)
        if model.training:  # the engine only reads `out` in validation
            return loss, {}
        img = image_logits.detach().float().cpu().numpy()
        n = lengths.tolist()
        out = {"study": list(batch["study"]), "sop": list(batch["sop"]),
               "exam_logits": exam_logits.detach().float().cpu().numpy(),
               "image_logits": [img[i, :k] for i, k in enumerate(n)],
               "exam_true": batch["exam_labels"].numpy(),
               "image_true": [batch["image_labels"][i, :k].numpy() for i, k in enumerate(n)]}
        return loss, out

    def val_metrics(self, outs):
        return score_outputs(merge_outputs(outs))["metrics"]

    # -- after training
    @torch.no_grad()
    def predict(self, model, loader, device):
        model.eval()
        return merge_outputs([self.step(model, batch, device)[1] for batch in loader])

    def finish(self, model, run_dir, val_loader, device):
        """With the best weights: predict every validation series; write oof.csv (post-processed,
        submission layout), scores.json and prior.json into the run folder."""
        ds = val_loader.dataset
        rec = self.predict(model, val_loader, device)
        expected = sorted({study for study, _ in ds.series})
        if sorted(rec["study"]) != expected:
            # e.g. one rank's shard: an oof file must cover its whole validation fold
            raise PipelineError(f"{run_dir}: predicted {len(rec['study'])} of {len(expected)} "
                                "validation studies")
        scored = score_outputs(rec)
        run_dir = Path(run_dir)
        atomic_to_csv(metric.to_submission(rec["study"], scored["exam_pp"], rec["sop"], scored["img_prob"]),
                      run_dir / "oof.csv")
        m = scored["metrics"]
        scores = {"cnn_run": self.cnn_run, "fold": self.fold, "studies": len(rec["study"]),
                  "images": int(sum(len(s) for s in rec["sop"])), "val_loss": m["val_loss"],
                  "score": m["score"], "score_postprocessed": m["score_pp"],
                  "per_label": _records(scored["per_label"]),
                  "per_label_postprocessed": _records(scored["per_label_pp"])}
        atomic_write_text(run_dir / "scores.json", json.dumps(scores, indent=2) + "\n")
        self.write_prior(run_dir)
        log.info("oof: %d studies, score %.5f (post-processed %.5f) -> %s",
                 scores["studies"], m["score"], m["score_pp"], run_dir / "oof.csv")

    def write_prior(self, run_dir):
        """prior.json: the label prior inference falls back on for a study it cannot read."""
        atomic_write_text(Path(run_dir) / "prior.json", json.dumps(self.split()[2], indent=2) + "\n")


def score_outputs(rec):
    """Scores of merged outputs: ``metrics`` for the trainer's log (val_loss, the competition
    score raw and post-processed, per-label log loss), the probabilities, the post-processed
    exam probabilities and the per-label tables (raw and post-processed)."""
    img_logits = np.concatenate(rec["image_logits"]) if rec["image_logits"] else np.zeros(0)
    img_true = np.concatenate(rec["image_true"]) if rec["image_true"] else np.zeros(0)
    image_loss = _bce_logits(img_logits, img_true)
    exam_loss = _bce_logits(rec["exam_logits"], rec["exam_true"])
    exam_prob = _sigmoid(rec["exam_logits"])
    img_prob = [_sigmoid(x) for x in rec["image_logits"]]
    exam_pp = metric.postprocess(exam_prob, img_prob)
    truth = (rec["exam_true"], rec["image_true"])
    m = {"val_loss": (image_loss + exam_loss) / 2, "val_loss_image": image_loss, "val_loss_exam": exam_loss,
         "score": float(metric.weighted_log_loss(truth[0], exam_prob, truth[1], img_prob)),
         "score_pp": float(metric.weighted_log_loss(truth[0], exam_pp, truth[1], img_prob))}
    per_label = metric.per_label_log_loss(truth[0], exam_prob, truth[1], img_prob)
    per_label_pp = metric.per_label_log_loss(truth[0], exam_pp, truth[1], img_prob)
    for label, ll in zip(per_label["label"], per_label["logloss"]):
        m[f"logloss_{label}"] = float(ll)
    return {"metrics": m, "exam_prob": exam_prob, "img_prob": img_prob, "exam_pp": exam_pp,
            "per_label": per_label, "per_label_pp": per_label_pp}
