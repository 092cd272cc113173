"""Stage 6's training task: the head (rsna_pe.models.head) over the embeddings of one CNN run and fold,
plugged into the shared engine (rsna_pe.train.engine): datasets, loss, validation metrics, and the
out-of-fold outputs written after training (rsna_pe.train.oof)."""
import logging

import torch

from .. import metric
from ..core import paths
from ..core.errors import PipelineError
from ..core.labels import LABELS, study_series
from ..data.embedding_data import EmbeddingDataset, collate
from ..data.folds import read_fold_csv, split_by_fold
from ..models.losses import HEAD_LOSSES
from ..records import provenance
from .oof import merge_outputs, score_outputs, write_oof
from .tasks import Task

log = logging.getLogger(__name__)


class HeadTask(Task):
    """The trainer's task for ``network: rnn``, the stage-6 head (see trainer.py for the engine)."""

    collate_fn = staticmethod(collate)

    def __init__(self, cfg):
        self.cfg = cfg
        ds = cfg["dataset"]
        self.fold, self.k_fold = int(ds["fold"]), int(ds["k_fold"])
        self.cnn_run = str(ds["cnn_run"])
        self.dump = paths.dump_dir(ds["dump_root"], self.cnn_run, self.fold)
        self._split = None
        loss = (cfg.get("loss") or {}).get("name", "bce")
        if loss not in HEAD_LOSSES:  # a typo must not pass silently
            raise PipelineError(f"loss.name '{loss}': the LSTM head trains with {' or '.join(HEAD_LOSSES)} "
                                "(the CNN run, dataset.cnn_run, carries the focal/bce choice)")
        self.loss_fn = HEAD_LOSSES[loss]

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
        rec = provenance.read_record(self.dump) or {}
        logits = (rec.get("params") or {}).get("logits") or []
        if len(logits) != n:
            raise PipelineError(f"{provenance.record_path(self.dump)}: the embeddings end with {len(logits)} CNN "
                                f"logits, config model.cnn_logits is {n} (dump a CNN with "
                                "model.exam_targets.in_embedding, or set model.cnn_logits to match)")

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
        """With the best weights: predict every validation series; write oof.csv, scores.json and
        prior.json into the run folder (rsna_pe.train.oof)."""
        ds = val_loader.dataset
        rec = self.predict(model, val_loader, device)
        expected = sorted({study for study, _ in ds.series})
        if sorted(rec["study"]) != expected:
            # e.g. one rank's shard: an oof file must cover its whole validation fold
            raise PipelineError(f"{run_dir}: predicted {len(rec['study'])} of {len(expected)} "
                                "validation studies")
        write_oof(run_dir, rec, self.split()[2], self.cnn_run, self.fold)
