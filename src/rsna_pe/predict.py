"""The CNN + LSTM ensemble on raw DICOM studies (stage 7 and predict_study).

Each study is decoded once for all models; per model pair the CNN embeds every slice, the LSTM
head predicts image and exam probabilities, the original's post-processing makes them
consistent; the pairs are averaged and post-processed again.
"""
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .checkpoint import find_checkpoint, load_model
from .dicom import read_series_images
from .embed import Embedder
from .errors import PipelineError
from .labels import EXAM_LABELS, IMAGE_LABEL
from .metric import postprocess

log = logging.getLogger(__name__)


def resolve_pairs(cfg):
    """[(cnn_ckpt, rnn_ckpt)] from ``checkpoints`` if given, else run names x folds."""
    if cfg["checkpoints"]:
        pairs = [(Path(p["cnn"]), Path(p["rnn"])) for p in cfg["checkpoints"]]
        for path in (p for pair in pairs for p in pair):
            if not path.is_file():
                raise PipelineError(f"{path}: checkpoint not found")
        return pairs
    return [(find_checkpoint(cfg["cnn_output"], m["cnn"], k), find_checkpoint(cfg["rnn_output"], m["rnn"], k))
            for m in cfg["models"] for k in cfg["folds"]]


def run_prior(rnn_ckpt):
    """The label prior saved with an RNN run (training means of the 10 labels)."""
    path = Path(rnn_ckpt).parent / "prior.json"
    if not path.is_file():
        raise PipelineError(f"{path}: label prior of the RNN run not found")
    return json.loads(path.read_text())


class Ensemble:
    def __init__(self, pairs, device, chunk=256, amp=True, channels_last=True, compile=False, tta_flip=False):
        self.device, self.members = device, []
        for cnn_path, rnn_path in pairs:
            cnn, cnn_cfg = load_model(cnn_path, device="cpu")
            rnn, rnn_cfg = load_model(rnn_path, device=device)
            want = rnn_cfg["dataset"].get("cnn_run")
            if want and want != cnn_cfg["run_name"]:
                raise PipelineError(f"{rnn_path}: RNN head was trained on embeddings of '{want}', "
                                    f"paired with CNN run '{cnn_cfg['run_name']}' ({cnn_path})")
            emb = Embedder(cnn, device, chunk=chunk, amp=amp, channels_last=channels_last,
                           compile=compile, tta_flip=tta_flip)
            self.members.append((cnn_cfg["dataset"]["size"], emb, rnn.eval()))
        priors = [run_prior(r) for _, r in pairs]
        self.prior = {k: float(np.mean([p[k] for p in priors])) for k in priors[0]}
        self.sizes = sorted({size for size, _, _ in self.members})

    @classmethod
    def from_models(cls, models, prior, device, chunk=256, amp=True, channels_last=True, compile=False,
                    tta_flip=False):
        """An ensemble of already built pairs [(cnn, cnn_cfg, rnn, rnn_cfg)] and their mean label
        prior (a model bundle: rsna_pe.bundle)."""
        self = cls.__new__(cls)
        self.device, self.prior = device, dict(prior)
        self.members = [(cnn_cfg["dataset"]["size"],
                         Embedder(cnn, device, chunk=chunk, amp=amp, channels_last=channels_last,
                                  compile=compile, tta_flip=tta_flip), rnn.to(device).eval())
                        for cnn, cnn_cfg, rnn, _ in models]
        self.sizes = sorted({size for size, _, _ in self.members})
        return self

    def read(self, series_dir):
        """Decode a series once at every input size the models need."""
        return read_series_images(series_dir, self.sizes)

    @torch.inference_mode()
    def predict(self, images):
        """{size: uint8 (S, 3, H, W)} -> (exam probabilities (9,), image probabilities (S,))."""
        exams, imgs = [], []
        # One host-to-device copy per input size, shared by all the models of that size.
        on_device = {size: self.members[0][1].to_device(images[size]) for size in self.sizes}
        for size, emb, rnn in self.members:
            feats = torch.from_numpy(emb.run(on_device[size])).to(self.device)[None]
            img_logit, exam_logit = rnn(feats, torch.tensor([feats.shape[1]]))
            img = torch.sigmoid(img_logit[0].float()).cpu().numpy()
            exam = postprocess(torch.sigmoid(exam_logit.float()).cpu().numpy(), [img])[0]
            exams.append(exam)
            imgs.append(img)
        img = np.mean(imgs, axis=0)
        return postprocess(np.mean(exams, axis=0)[None], [img])[0], img

    def prior_prediction(self, n_images):
        """The fallback for an unreadable study: every label at its training mean, made consistent."""
        img = np.full(n_images, self.prior[IMAGE_LABEL])
        exam = np.array([[self.prior[k] for k in EXAM_LABELS]])
        return postprocess(exam, [img])[0], img


def series_dirs(root, df):
    """{study: its series folder} from a test.csv-layout frame (one series per study)."""
    pairs = df[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates()
    dup = pairs["StudyInstanceUID"].duplicated()
    if dup.any():
        raise PipelineError(f"study {pairs.loc[dup, 'StudyInstanceUID'].iloc[0]} has several series; "
                            "one series per study is expected")
    return {s: Path(root) / s / r for s, r in pairs.values}



class StudyReader(torch.utils.data.Dataset):
    """One study per item, decoded in DataLoader workers while the models run on the last one.
    A study that cannot be read comes back with ``error`` set instead of raising."""

    def __init__(self, studies, dirs, reader):
        self.studies, self.dirs, self.reader = studies, dirs, reader

    def __len__(self):
        return len(self.studies)

    def __getitem__(self, i):
        study = self.studies[i]
        try:
            infos, images = self.reader(self.dirs[study])
            return {"study": study, "sops": [x.sop for x in infos], "images": images, "error": None}
        except Exception as e:  # PipelineError names the file; anything else is reported as is
            msg = str(e) if isinstance(e, PipelineError) else f"{self.dirs[study]}: {type(e).__name__}: {e}"
            return {"study": study, "sops": None, "images": None, "error": msg}
