"""The CNN + LSTM ensemble on raw DICOM studies (stage 7 and predict_study).

Each study is decoded once for all models; per model pair the CNN embeds every slice, the LSTM
head predicts image and exam probabilities, the original's post-processing makes them
consistent; the pairs are averaged and post-processed again; a bundle's calibration, if it
carries one, is applied last (rsna_pe.infer.calibration). ``load_ensemble`` builds it from a
model bundle or from the run folders: inference gets its models here either way. With
``runtime: onnx`` the pairs are a bundle's ONNX models run by ONNX Runtime on the CPU
(rsna_pe.infer.onnx_runtime); torch is then never imported, so this module imports it only
where the torch runtime needs it.
"""
import collections
import logging
import multiprocessing as mp

import numpy as np

from ..core import paths
from ..core.errors import ConfigError, PipelineError
from ..core.labels import EXAM_LABELS, IMAGE_LABEL, study_series
from ..core.parallel import START_METHOD
from ..data.acquisition import series_acquisition
from ..data.dicom import read_dataset, read_series_images, series_files
from ..data.lungcrop import lung_box
from ..data.model_input import input_kind, model_input, through_codec
from ..metric import postprocess
from ..records.provenance import checkpoint_sha256
from .bundle import open_bundle
from .calibration import FILE as CALIBRATION_FILE
from .calibration import calibrate
from .pairs import check_pair, jpeg_settings, mean_prior, resolve_pairs, run_prior

log = logging.getLogger(__name__)
RUNTIMES = ("torch", "onnx")


def uses_onnx(cfg):
    """Whether ``cfg['runtime']`` (torch when absent) is onnx; another value is a config error."""
    value = cfg.get("runtime", "torch")
    if value not in RUNTIMES:
        raise ConfigError(f"config {cfg.get('config_file')}: key 'runtime' is {value!r:.40}, "
                          f"choose from {', '.join(RUNTIMES)}")
    return value == "onnx"


def load_ensemble(cfg, device, compile=False):
    """The inference ensemble from ``cfg['bundle']`` if set, else from the run folders, on
    ``device``; with ``runtime: onnx`` the bundle's ONNX models on the CPU (``device`` and
    ``compile`` are then not used)."""
    if uses_onnx(cfg):
        from .onnx_runtime import load_onnx_ensemble  # it builds on this module's Ensemble

        if getattr(device, "type", "cpu") != "cpu":
            log.info("runtime=onnx runs on the CPU, not on %s", device)
        return load_onnx_ensemble(cfg)
    kw = dict(chunk=cfg["batch_size"], amp=cfg["amp"], channels_last=cfg["channels_last"],
              compile=compile, tta_flip=cfg["tta_flip"])
    if cfg.get("bundle"):
        members, prior, sources, site = open_bundle(cfg["bundle"], device)
        return Ensemble.from_models(members, prior, sources, device, calibration=site.get(CALIBRATION_FILE), **kw)
    return Ensemble(resolve_pairs(cfg), device, **kw)


class SeriesReader:
    """A series read as an ensemble's CNNs take it, knowing only their input ``specs`` (so that
    it pickles into worker processes started afresh: ``read_ahead``)."""

    def __init__(self, specs):
        self.specs = list(specs)
        self._boxes_of, self._boxes = None, {}  # the last series' lung boxes (see _lung_boxes)

    def read(self, series_dir):
        """A series (its folder of ``*.dcm``, or a list of its files) -> (slices in z order,
        {spec: uint8 (S, 3, size, size)}): each file decoded once."""
        infos, images, _ = self.read_with(series_dir, ())
        return infos, images

    def read_with(self, series_dir, extra_sizes):
        """``read``, plus the windowed slices at ``extra_sizes`` (e.g. viewer previews) from the
        same decode: -> (infos, {spec: model input}, {size: uint8 (S, 3, size, size)})."""
        # Each crop's box is found once per series, as stage 1 found it (None: no lungs, whole
        # slices); the series is then windowed once per (JPEG size, box) and goes through the
        # codec once per JPEG set, whatever the models make of its slices.
        boxes = self._lung_boxes(series_dir)
        view = lambda j, c: j if boxes.get(c) is None else (j, boxes[c])  # noqa: E731
        views = list(dict.fromkeys([view(j, c) for j, _, _, c, _ in self.specs] + list(extra_sizes)))
        infos, windowed = read_series_images(series_dir, views)
        decoded = {(j, q, c): through_codec(windowed[view(j, c)], q or None) for j, q, _, c, _ in self.specs}
        images = {(j, q, n, c, k): model_input(decoded[j, q, c], k, n) for j, q, n, c, k in self.specs}
        return infos, images, {s: windowed[s] for s in extra_sizes}

    def crop_regions(self, series_dir):
        """{spec: its lung box as shares of the slice (x0, y0, x1, y1), or None} of the
        lung-cropped model inputs, to draw what they see on the whole slice."""
        boxes = self._lung_boxes(series_dir)
        if not boxes:
            return {}
        ds = read_dataset(series_files(series_dir)[0], header_only=True)
        cols, rows = int(ds.Columns), int(ds.Rows)
        return {s: None if boxes.get(s[3]) is None else
                (boxes[s[3]][0] / cols, boxes[s[3]][1] / rows, boxes[s[3]][2] / cols, boxes[s[3]][3] / rows)
                for s in self.specs}

    def _lung_boxes(self, series_dir):
        """{crop margin: the series' lung box, or None (no lungs: whole slices)} of the
        lung-cropped inputs; found once per series, although the viewer asks again after
        ``read_with`` (each search reads up to 32 of the series' files)."""
        if self._boxes_of != str(series_dir):
            crops = {s[3] for s in self.specs if s[3] is not None}
            self._boxes = {c: lung_box(series_dir, c) for c in crops}
            self._boxes_of = str(series_dir)
        return self._boxes


class Ensemble:
    """The CNN + LSTM pairs. Each CNN sees what it saw in training: the slices (cut to the
    series' lung box if its JPEG set was lung-cropped) windowed at its JPEG set's size, through
    that set's JPEG codec in memory, made into its input kind and resized to its input size
    (rsna_pe.data.model_input); ``jpeg_codec=False`` skips the codec (only to measure what it
    changes)."""

    runtime = "torch"  # what runs the models (rsna_pe.infer.onnx_runtime.OnnxEnsemble: onnx)
    explains = True  # activation maps can be made of its CNNs (rsna_pe.viz.cam)

    def __init__(self, pairs, device, chunk=256, amp=True, channels_last=True, compile=False, tta_flip=False,
                 jpeg_codec=True):
        """From run folders: [(cnn checkpoint, rnn checkpoint)], each pair checked."""
        from ..train.checkpoint import load_trained

        members, sources = [], []
        for cnn_path, rnn_path in pairs:
            cnn, cnn_ckpt = load_trained(cnn_path, device="cpu")
            rnn, rnn_ckpt = load_trained(rnn_path, device=device)
            check_pair(cnn_path, cnn_ckpt, rnn_path, rnn_ckpt)
            members.append((cnn, cnn_ckpt, rnn, cnn_path))
            sources.append({"cnn": checkpoint_sha256(cnn_path), "rnn": checkpoint_sha256(rnn_path),
                            "where": [str(cnn_path), str(rnn_path)]})
        prior = mean_prior([run_prior(r) for _, r in pairs])
        self._set_up(members, prior, sources, device, jpeg_codec,
                     dict(chunk=chunk, amp=amp, channels_last=channels_last, compile=compile, tta_flip=tta_flip))

    @classmethod
    def from_models(cls, models, prior, sources, device, chunk=256, amp=True, channels_last=True,
                    compile=False, tta_flip=False, calibration=None):
        """An ensemble of already built pairs [(cnn, cnn checkpoint fields (config, record), rnn,
        where)] with their mean label prior and content hashes (a model bundle: rsna_pe.infer.bundle);
        ``calibration``: {"doc": the bundle's checked calibration.json, "sha256": of its bytes}."""
        self = cls.__new__(cls)
        self._set_up(models, prior, sources, device, True,
                     dict(chunk=chunk, amp=amp, channels_last=channels_last, compile=compile, tta_flip=tta_flip))
        self.calibration = calibration
        return self

    def _set_up(self, models, prior, sources, device, jpeg_codec, embed_kw):
        self.device, self.prior, self.members = device, dict(prior), []
        self.calibration = None  # see from_models
        # [{cnn: sha256, rnn: sha256, where: [...]}] per pair: what stage 7's record names
        self.sources = sources
        for cnn, cnn_ckpt, rnn, where in models:
            jpeg_size, quality, crop = jpeg_settings(cnn_ckpt, where)
            cfg = cnn_ckpt["config"]
            spec = (jpeg_size, quality if jpeg_codec else 0, int(cfg["dataset"]["size"]), crop,
                    input_kind(cfg))
            self.members.append((spec, *self._member(cnn, rnn, device, embed_kw)))
        # (JPEG size, quality (0: no codec), input size, lung crop margin (None: whole slices),
        # input kind) of each distinct model input, in the order of the pairs
        self.specs = list(dict.fromkeys(spec for spec, _, _ in self.members))
        self.reader = SeriesReader(self.specs)
        log.info("model inputs: %s", ", ".join(f"{n} px {kind} (JPEG {j} px{'' if c is None else ', lung crop'})"
                                               for j, _, n, c, kind in self.specs))

    def _member(self, cnn, rnn, device, embed_kw):
        """(what embeds a series' slices, the head) of one pair."""
        from .embed import Embedder

        return Embedder(cnn, device, **embed_kw), rnn.to(device).eval()

    def read(self, series_dir):
        """SeriesReader.read: a series as the CNNs take it."""
        return self.reader.read(series_dir)

    def read_with(self, series_dir, extra_sizes):
        """SeriesReader.read_with: ``read`` and windowed slices at ``extra_sizes``."""
        return self.reader.read_with(series_dir, extra_sizes)

    def crop_regions(self, series_dir):
        """SeriesReader.crop_regions: where the lung-cropped inputs lie on the whole slice."""
        return self.reader.crop_regions(series_dir)

    @property
    def group(self):
        """Slices of consecutive studies to run as one pass (0: one study at a time), see
        rsna_pe.infer.embed."""
        return self.members[0][1].group

    def member_outputs_many(self, studies):
        """[{spec: uint8 (S, 3, H, W)}] -> per study, per pair (image probabilities (S,), exam
        probabilities (9,)), before post-processing. Everything stays on the device: each CNN
        embeds the studies' slices in one pass, its head takes them as a padded batch, and the
        probabilities of all pairs come to the host in one copy."""
        import torch

        with torch.inference_mode():
            return self._member_outputs(studies)

    def _member_outputs(self, studies):
        import torch
        from torch.nn.utils.rnn import pad_sequence

        from .embed import to_device

        lengths = [len(next(iter(images.values()))) for images in studies]
        # One host-to-device copy per model input, shared by all the models that take it.
        emb0 = self.members[0][1]
        on_device = {spec: emb0.stack_on_device([images[spec] for images in studies]) for spec in self.specs}
        lens = to_device(torch.tensor(lengths, dtype=torch.int64), self.device)
        img_probs, exam_probs = [], []
        for spec, embedder, rnn in self.members:
            feats = embedder.embed(on_device[spec]).split(lengths)
            img_logit, exam_logit = rnn(pad_sequence(feats, batch_first=True), lens)
            img_probs.append(torch.sigmoid(img_logit.float()))
            exam_probs.append(torch.sigmoid(exam_logit.float()))
        img, exam = torch.stack(img_probs, 1), torch.stack(exam_probs, 1)  # (B, pairs, S max), (B, pairs, 9)
        host = torch.cat([img.flatten(), exam.flatten()]).cpu().numpy()
        img, exam = host[:img.numel()].reshape(img.shape), host[img.numel():].reshape(exam.shape)
        return [[(img[b, m, :n], exam[b, m]) for m in range(len(self.members))] for b, n in enumerate(lengths)]

    def member_outputs(self, images):
        """{spec: uint8 (S, 3, H, W)} -> per pair (image probabilities (S,), exam probabilities
        (9,)), before post-processing."""
        return self.member_outputs_many([images])[0]

    def _combine(self, outs):
        """Per pair (image, exam) -> (exam (9,), image (S,)): each pair post-processed,
        averaged, post-processed again; then calibrated (and post-processed once more) if the
        ensemble has a calibration."""
        exams = [postprocess(exam[None], [img])[0] for img, exam in outs]
        img = np.mean([img for img, _ in outs], axis=0)
        exam = postprocess(np.mean(exams, axis=0)[None], [img])[0]
        if self.calibration is None:
            return exam, img
        return calibrate(self.calibration["doc"], exam, img)

    @property
    def calibration_info(self):
        """What a record names of the calibration applied: None, or its file's sha256, method
        and the labels it changes."""
        if self.calibration is None:
            return None
        doc = self.calibration["doc"]
        return {"file": CALIBRATION_FILE, "sha256": self.calibration["sha256"], "method": doc["method"],
                "labels": sorted(doc["labels"])}

    def predict(self, images):
        """{spec: uint8 (S, 3, H, W)} -> (exam probabilities (9,), image probabilities (S,)):
        each pair post-processed, averaged, post-processed again."""
        return self._combine(self.member_outputs(images))

    def predict_many(self, studies):
        """[{spec: uint8 (S, 3, H, W)}] -> [(exam (9,), image (S,))] as ``predict``, in one pass."""
        return [self._combine(outs) for outs in self.member_outputs_many(studies)]

    def prior_prediction(self, n_images):
        """The fallback for an unreadable study: every label at its training mean, made consistent."""
        img = np.full(n_images, self.prior[IMAGE_LABEL])
        exam = np.array([[self.prior[k] for k in EXAM_LABELS]])
        return postprocess(exam, [img])[0], img


def series_dirs(root, df, source="test.csv"):
    """{study: its series folder} from a test.csv-layout frame (one series per study)."""
    return {study: paths.series_dir(root, study, series) for study, series in study_series(df, source)}



class StudyReader:
    """One study per item, decoded in DataLoader workers (``read_ahead``'s without torch) while
    the models run on the last one. A study that cannot be read comes back with ``error`` set
    instead of raising."""

    def __init__(self, studies, dirs, reader):
        self.studies, self.dirs, self.reader = studies, dirs, reader

    def __len__(self):
        return len(self.studies)

    def __getitem__(self, i):
        study = self.studies[i]
        try:
            infos, images = self.reader(self.dirs[study])
            return {"study": study, "sops": [x.sop for x in infos], "images": images, "error": None,
                    "acquisition": series_acquisition(infos)}
        except Exception as e:  # PipelineError names the file; anything else is reported as is
            msg = str(e) if isinstance(e, PipelineError) else f"{self.dirs[study]}: {type(e).__name__}: {e}"
            return {"study": study, "sops": None, "images": None, "error": msg, "acquisition": None}


_WORKER_READER = None  # the StudyReader of a read_ahead worker process


def _start_worker(reader):
    global _WORKER_READER
    import cv2  # one process per worker already: cv2's own threads would oversubscribe

    cv2.setNumThreads(1)
    _WORKER_READER = reader


def _read_item(i):
    return _WORKER_READER[i]


def read_ahead(reader, num_workers, ahead=4):
    """The items of ``reader`` (a StudyReader whose reading function pickles) in order, decoded
    by ``num_workers`` processes with ``ahead`` items each in flight (0 workers: in this
    process): what the torch runtime's DataLoader does, without torch."""
    if num_workers <= 0:
        yield from (reader[i] for i in range(len(reader)))
        return
    # Workers from a clean server process, as rsna_pe.core.parallel's: the reader goes to them
    # pickled (a SeriesReader's read, not an ensemble's: its sessions do not pickle).
    with mp.get_context(START_METHOD).Pool(num_workers, initializer=_start_worker, initargs=(reader,)) as pool:
        pending = collections.deque()
        for i in range(len(reader)):
            pending.append(pool.apply_async(_read_item, (i,)))
            if len(pending) >= num_workers * ahead:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
