"""The DICOM node: a storage SCP (pynetdicom) that answers C-ECHO, receives studies, predicts a
study once none of its images has arrived for ``quiet_seconds``, writes the results in its work
folder (rsna_pe.serve.spool) and sends the SR and key images to the destination with C-STORE.

One study at a time is predicted, in the thread that calls ``run``; images are received
meanwhile by pynetdicom's association threads. The quiet time counts per study, not per series:
the series to predict is chosen among all of a study's series (rsna_pe.data.discovery). Every
pending study gets a fresh quiet time when the node starts, so a sender retrying after a crash
completes the study before it is predicted.
"""
import logging
import threading
import time
from dataclasses import dataclass
from types import SimpleNamespace

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from ..core.errors import ConfigError, PipelineError
from ..core.ids import checked, show
from ..core.io import atomic_dir
from ..data.discovery import discover
from ..viz.dicom_out import DicomOut, algorithm_identity
from ..viz.viewer import PREVIEW_SIZE
from .send import Destination, send_files
from .spool import Spool
from .study import one_line, predict_series

log = logging.getLogger("dicom_node")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700   # C-STORE refused for now: the queue or the study is full
CANNOT_UNDERSTAND = 0xC000  # C-STORE refused: a UID missing or unfit for a file name
ANSWERED = "answered"       # an image of a study already answered: acknowledged, not stored


@dataclass
class Settings:
    """The node's own keys of configs/dicom_node.yml (the models and reading come from the
    inference keys it inherits)."""
    ae_title: str
    host: str
    port: int
    destination: Destination | None
    allowed_callers: list
    work_dir: str
    quiet_seconds: float
    poll_seconds: float
    retry_seconds: float
    max_pending_studies: int
    max_images_per_study: int
    key_images: int

    @classmethod
    def from_config(cls, cfg):
        keys = [f for f in cls.__dataclass_fields__]
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise ConfigError(f"dicom node config: missing key '{missing[0]}'")
        s = cls(**{k: cfg[k] for k in keys})
        s.destination = Destination.from_config(cfg["destination"])
        s.check()
        return s

    def check(self):
        Destination.check_ae(self.ae_title, "ae_title")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"dicom node: port {self.port!r}: an integer 0-65535 (0: any free port)")
        for k in ("quiet_seconds", "poll_seconds", "retry_seconds"):
            if not isinstance(getattr(self, k), (int, float)) or getattr(self, k) < 0:
                raise ConfigError(f"dicom node: {k} {getattr(self, k)!r}: a number of seconds >= 0")
        for k in ("max_pending_studies", "max_images_per_study", "key_images"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < (k != "key_images"):
                raise ConfigError(f"dicom node: {k} {getattr(self, k)!r}: a positive integer")
        for a in self.allowed_callers:
            Destination.check_ae(a, "allowed_callers")


class Node:
    """``ens``: the loaded models (rsna_pe.infer.ensemble.load_ensemble); ``cfg``: the config."""

    def __init__(self, cfg, ens, settings=None):
        self.cfg, self.ens = cfg, ens
        self.s = settings or Settings.from_config(cfg)
        self.spool = Spool(self.s.work_dir)
        self.identity = algorithm_identity(cfg, ens.sources)
        self.lock = threading.Lock()
        self.last_arrival, self.counts, self.retry_at = {}, {}, {}
        now = time.monotonic()
        for study in self.spool.pending():  # a fresh quiet time: a sender may be completing it
            self.last_arrival[study], self.counts[study] = now, len(self.spool.images(study))
            log.info("pending from before: study %s, %d images", show(study), self.counts[study])
        for study in [d.name for d in self.spool.incoming.iterdir() if d.is_dir() and self.spool.is_done(d.name)]:
            self.spool.forget(study)  # answered, but the node stopped before removing its images
        self.server, self.received = None, {}

    # --- receiving (association threads) ---------------------------------------------------

    def start(self):
        """Listen; -> the (host, port) bound (port 0 in the config: a free one)."""
        # pynetdicom logs every request at INFO; the node's own lines say what arrived, per study
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)
        ae = AE(ae_title=self.s.ae_title)
        ae.add_supported_context(Verification)
        for cx in AllStoragePresentationContexts:  # compressed too: pydicom + GDCM decode them
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        if self.s.allowed_callers:
            ae.require_calling_aet = list(self.s.allowed_callers)
        handlers = [(evt.EVT_C_ECHO, self.on_echo), (evt.EVT_C_STORE, self.on_store),
                    (evt.EVT_RELEASED, self.on_end), (evt.EVT_ABORTED, self.on_end)]
        self.server = ae.start_server((self.s.host, self.s.port), block=False, evt_handlers=handlers)
        host, port = self.server.server_address[:2]
        log.info("listening as %s on %s:%d; results to %s; quiet time %g s", show(self.s.ae_title), host, port,
                 self.s.destination or "the work folder only", self.s.quiet_seconds)
        return host, port

    def on_echo(self, event):
        log.info("C-ECHO from %s (%s)", show(event.assoc.requestor.ae_title), event.assoc.requestor.address)
        return SUCCESS

    def on_store(self, event):
        try:
            ds = event.dataset
            study, series, sop = (checked(getattr(ds, k, None), k, "received image") for k in
                                  ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
            verdict = self._admit(study)
            if verdict == SUCCESS:
                self.spool.store(study, series, sop, event.encoded_dataset())
                with self.lock:
                    self.last_arrival[study] = time.monotonic()
        except Exception as e:  # refused, said why; the association and the node go on
            log.warning("C-STORE from %s refused: %s", show(event.assoc.requestor.ae_title), one_line(e))
            verdict, study = CANNOT_UNDERSTAND, None
        self.received.setdefault(event.assoc, {}).setdefault(study, []).append(verdict)
        return SUCCESS if verdict == ANSWERED else verdict  # a resend of an answered study is fine

    def _admit(self, study):
        """SUCCESS to store the image; else ANSWERED (taken, not stored) or the refusing status."""
        if self.spool.is_done(study):
            return ANSWERED
        with self.lock:
            n = self.counts.get(study)
            if n is None and len(self.counts) >= self.s.max_pending_studies:
                return OUT_OF_RESOURCES
            if (n or 0) >= self.s.max_images_per_study:
                return OUT_OF_RESOURCES
            self.counts[study] = (n or 0) + 1
        return SUCCESS

    def on_end(self, event):
        """One line per association: what arrived, per study."""
        for study, statuses in self.received.pop(event.assoc, {}).items():
            stored = statuses.count(SUCCESS)
            extra = [f"{statuses.count(s)} {what}" for s, what in
                     ((ANSWERED, "ignored (study already answered)"), (OUT_OF_RESOURCES, "refused (queue full)"),
                      (CANNOT_UNDERSTAND, "refused (unfit UIDs)")) if s in statuses]
            log.info("received from %s: study %s, %d images stored%s", show(event.assoc.requestor.ae_title),
                     show(study), stored, "".join(f", {e}" for e in extra))

    # --- predicting and sending (the thread that calls run) -------------------------------

    def run(self, stop):
        """Work until ``stop`` (a threading.Event) is set: each study ready, one at a time."""
        while not stop.is_set():
            for study in self.ready():
                if stop.is_set():
                    break
                self.process(study)
            stop.wait(self.s.poll_seconds)
        log.info("stopping: %d studies pending (taken up at the next start)", len(self.spool.pending()))

    def ready(self):
        """Pending studies whose quiet time has passed (predicted ones: whose retry time has)."""
        now = time.monotonic()
        with self.lock:
            quiet = [s for s, t in self.last_arrival.items() if now - t >= self.s.quiet_seconds]
        return [s for s in quiet if now >= self.retry_at.get(s, 0) and not self.spool.is_done(s)]

    def process(self, study):
        """Predict (unless done before a restart) and send one study; a failure is one log line."""
        try:
            if not self.spool.has_results(study):
                self.predict(study)
        except Exception as e:
            log.warning("study %s not predicted: %s", show(study), one_line(e))
            return self._finish(study, {"status": "failed", "reason": one_line(e)})
        if self.s.destination is None:
            return self._finish(study, {"status": "kept", "objects": [p.name for p in self.spool.objects(study)]})
        try:
            sent = send_files(self.spool.objects(study), self.s.destination, self.s.ae_title)
        except Exception as e:  # the archive is down or refuses: the images stay, retried later
            self.retry_at[study] = time.monotonic() + self.s.retry_seconds
            log.warning("study %s not sent (retry in %g s): %s", show(study), self.s.retry_seconds, one_line(e))
            return None
        log.info("sent study %s to %s: %d objects in %.1f s", show(study), self.s.destination, *sent)
        return self._finish(study, {"status": "sent", "destination": str(self.s.destination), "objects": sent[0]})

    def _finish(self, study, record):
        self.spool.finish(study, {"study": study, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record})
        with self.lock:
            for d in (self.last_arrival, self.counts, self.retry_at):
                d.pop(study, None)

    def predict(self, study):
        t = time.perf_counter()
        images = self.spool.images(study)
        found = discover(self.spool.incoming / study, self.cfg["series_selection"])
        entries = found.entries()
        if len(entries) != 1:
            raise PipelineError(f"study {show(study)}: its images hold {len(entries)} studies")
        with atomic_dir(self.spool.results / study, root=self.spool.results) as tmp:
            row = predict_series(self.ens, entries[0].to_predict().files, tmp, self._outputs(tmp),
                                 entries[0].skipped)
        log.info("predicted study %s: %d slices (%d images received), P(PE) %.3f, in %.1f s", show(study),
                 row["slices"], len(images), 1 - row["exam"]["negative_exam_for_pe"], time.perf_counter() - t)

    def _outputs(self, folder):
        """predict_series' options: activation maps for the key images only, DICOM objects on."""
        k = self.s.key_images
        dicom = DicomOut(folder / "dicom", self.cfg["dicom_uid_root"], self.cfg["deterministic_uids"], k,
                         self.identity)
        return SimpleNamespace(cam_top_k=k, cam_all=False, cam_batch=16, preview_size=PREVIEW_SIZE, dicom=dicom)

    def shutdown(self):
        if self.server is not None:
            self.server.shutdown()
            self.server = None
