"""What the DICOM object and node tests share: studies with valid UIDs, the SR checked against a
prediction.json, a node config, a node in a process, a storage SCP that collects what it gets,
and Orthanc on loopback ports."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

import dicom_node
import predict_study
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.core.paths import REPO_ROOT
from rsna_pe.serve.send import Destination, send_files

LEGACY = Path(__file__).resolve().parents[1] / "fixtures" / "legacy"
SRC = REPO_ROOT / "src"


def valid_uid_copy(src, dst):
    """The legacy studies with valid DICOM UIDs: the competition's all-hex ids are not, and
    dciodvfy rightly flags every object that carries or references them."""
    for f in sorted(src.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, kw, generate_uid(entropy_srcs=[str(getattr(ds, kw))]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out = dst / f.relative_to(src).parent / f"{ds.SOPInstanceUID}.dcm"
        out.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out)
    return dst


def valid_studies(folder):
    """The legacy studies with valid UIDs under ``folder/studies``; -> that folder."""
    with pytest.warns(UserWarning):  # reading the hex ids once, to replace them
        return valid_uid_copy(LEGACY / "studies", folder / "studies")


def reference_predictions(studies, folder):
    """predict_study's prediction.json per StudyInstanceUID for the studies under ``studies``,
    with the node's own config (the values the node's SR must carry)."""
    predict_study.main([str(studies), "-c", str(node_config(folder, 0)), "--out", str(folder / "out"),
                        "--cam-top-k", "0"])
    preds = (json.loads(p.read_text()) for p in (folder / "out").rglob("prediction.json"))
    return {p["study"]: p for p in preds}


def check_sr(sr, pred):
    """A TID 1500 SR read back with highdicom holds ``pred``'s (a prediction.json) values."""
    assert sr.StudyInstanceUID == pred["study"] and sr.SeriesInstanceUID != pred["series"]
    exam_group, slice_group = sr.content.get_image_measurement_groups()
    exam = {m.name.meaning: m.value for m in exam_group.get_measurements()}
    assert list(exam) == list(EXAM_LABELS)
    np.testing.assert_allclose(list(exam.values()), [pred["exam"][k] for k in EXAM_LABELS], atol=1e-6)
    decisions = {q.name.meaning: q.value.meaning for q in exam_group.get_qualitative_evaluations()}
    assert decisions == {k: "Yes" if v > 0.5 else "No" for k, v in pred["exam"].items()}
    per_image = {m.referenced_images[0].referenced_sop_instance_uid: m.value for m in slice_group.get_measurements()}
    assert sorted(per_image) == sorted(s["sop"] for s in pred["slices"])  # every image referenced
    np.testing.assert_allclose([per_image[s["sop"]] for s in pred["slices"]],
                               [s["pe_present_on_image"] for s in pred["slices"]], atol=1e-6)


def read_sr(data):
    return hd.sr.srread(pydicom.filebase.DicomBytesIO(data))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node_config(folder, port, destination=None, **keys):
    """A node config for the tests: the legacy bundle, the demo's reading sizes, loopback."""
    cfg = {"base": str(CONFIG_DIR / "dicom_node.yml"), "bundle": str(LEGACY / "bundle"), "batch_size": 64,
           "num_workers": 0, "port": port, "work_dir": str(folder / "work"), "quiet_seconds": 1.0,
           "poll_seconds": 0.2, "retry_seconds": 0.5, "key_images": 2,
           "destination": destination or {"ae_title": "", "host": "", "port": 0}, **keys}
    path = folder / "node.yml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def wait_for(check, timeout, what):
    """Poll ``check()`` until it returns something true; -> that value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


class NodeProcess:
    """``python src/dicom_node.py -c CONFIG`` in its own process, log in ``folder/node-<k>.log``."""

    def __init__(self, config, folder, k=0):
        self.log = folder / f"node-{k}.log"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(SRC / "dicom_node.py"), "-c", str(config)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
        wait_for(lambda: "listening as" in self.text() or self.proc.poll() is not None, 120, "the node to listen")
        assert self.proc.poll() is None, self.text()

    def text(self):
        return self.log.read_text(errors="replace")

    def kill(self):
        self.proc.kill()
        self.proc.wait(30)

    def stop(self):
        """SIGTERM; -> the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


class ThreadNode:
    """dicom_node.main in a thread of this process, stopped by its event."""

    def __init__(self, config, port):
        self.stop, self.port = threading.Event(), port
        self.error = None
        self.thread = threading.Thread(target=self._main, args=(config,), daemon=True)
        self.thread.start()
        wait_for(lambda: self.echo() or self.error, 120, "the node to answer C-ECHO")
        assert self.error is None, self.error

    def _main(self, config):
        try:
            dicom_node.main(["-c", str(config)], stop=self.stop)
        except Exception as e:  # shown by the test that waits
            self.error = e

    def echo(self):
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", self.port, ae_title="RSNA-PE")
        if not assoc.is_established:
            return False
        status = assoc.send_c_echo()
        assoc.release()
        return status.Status == 0

    def send(self, files):
        return send_files(files, Destination("RSNA-PE", "127.0.0.1", self.port), "TESTSCU")

    def close(self):
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive()


class Collector:
    """A storage SCP standing in for an archive: every data set received, in order."""

    def __init__(self, ae_title="ARCHIVE"):
        self.received, self.port = [], free_port()
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.destination = {"ae_title": ae_title, "host": "127.0.0.1", "port": self.port}

    def _store(self, event):
        self.received.append(pydicom.dcmread(pydicom.filebase.DicomBytesIO(event.encoded_dataset())))
        return 0x0000

    def of_modality(self, modality):
        return [d for d in self.received if d.Modality == modality]

    def close(self):
        self.server.shutdown()


class Orthanc:
    """Orthanc (Debian's package) with a temporary configuration on loopback ports, the node
    registered as the modality ``node``."""

    def __init__(self, folder, node_port, node_ae="RSNA-PE"):
        exe = shutil.which("Orthanc")
        if exe is None:
            message = "Orthanc not found: install it with `apt-get install orthanc` (Debian)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        self.http, self.dicom_port = free_port(), free_port()
        config = {"Name": "test", "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
                  "HttpPort": self.http, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
                  "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": [],
                  "DicomModalities": {"node": [node_ae, "127.0.0.1", node_port]}}
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")
        self.proc = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self._up, 60, "Orthanc to answer")
        self.destination = {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": self.dicom_port}

    def _up(self):
        try:
            return self.get("/system")
        except OSError:
            return None

    def call(self, method, path, data=None):
        body = data if data is None or isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}", data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            raw = r.read()
        return json.loads(raw) if r.headers.get_content_type() == "application/json" else raw

    def get(self, path):
        return self.call("GET", path)

    def upload(self, files):
        """-> the Orthanc ids of the studies the files belong to."""
        return sorted({self.call("POST", "/instances", Path(f).read_bytes())["ParentStudy"] for f in files})

    def instances(self, study, modality):
        """The instances (Orthanc ids) of a study's series of ``modality``."""
        return [i for s in self.get(f"/studies/{study}/series") if s["MainDicomTags"].get("Modality") == modality
                for i in s["Instances"]]

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()
