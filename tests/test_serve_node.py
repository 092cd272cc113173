"""The DICOM node (src/dicom_node.py) against a storage SCP standing in for the archive: C-ECHO,
studies received, predicted and sent once with predict_study's values; a study that cannot be
predicted and an image without UIDs answered by a log line; the queue bound; a node killed after
predicting and started again sends each result once; SIGTERM stops it cleanly; bad settings are
one line. The round trip through a real archive is tests/test_serve_orthanc.py."""
import json
import logging
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage
from support.dicom_node import (
    LEGACY,
    Collector,
    NodeProcess,
    ThreadNode,
    check_sr,
    free_port,
    node_config,
    read_sr,
    reference_predictions,
    valid_studies,
    wait_for,
)
from support.workspace import SUB_ENV

import dicom_node
import export_models
from rsna_pe.core.config import CONFIG_DIR
from rsna_pe.core.errors import ConfigError
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.serve.node import OUT_OF_RESOURCES, Settings
from rsna_pe.serve.send import Destination, send_files


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    return sorted(d for d in valid_studies(tmp_path_factory.mktemp("node_studies")).iterdir())


@pytest.fixture(scope="module")
def reference(studies, tmp_path_factory, one_thread):
    return reference_predictions(studies[0].parent, tmp_path_factory.mktemp("node_reference"))


def files_of(study_dir):
    return sorted(study_dir.rglob("*.dcm"))


def _mr_copy(study_dir, dst):
    """A study of MR images only: no series fits the rule, so it cannot be predicted."""
    for f in files_of(study_dir):
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
            setattr(ds, kw, pydicom.uid.generate_uid(entropy_srcs=["mr", str(getattr(ds, kw))]))
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        dst.mkdir(parents=True, exist_ok=True)
        ds.save_as(dst / f.name)
    return dst


def test_node_predicts_each_study_and_sends_it_once(studies, reference, tmp_path, caplog, one_thread):
    archive, port = Collector(), free_port()
    node = ThreadNode(node_config(tmp_path, port, archive.destination), port)
    try:
        mr = _mr_copy(studies[0], tmp_path / "mr")
        with caplog.at_level(logging.INFO, logger="dicom_node"):
            for study in [*studies, mr]:
                assert node.send(files_of(study))[0] == len(files_of(study))
            wait_for(lambda: len(archive.of_modality("SR")) == len(studies) and "not predicted" in caplog.text,
                     120, "an SR per study and the MR study's failure")
            node.send(files_of(studies[0]))  # a resend of an answered study: taken, not answered again
            wait_for(lambda: "already answered" in caplog.text, 30, "the resend to be logged")
    finally:
        node.close()
        archive.close()
    srs = archive.of_modality("SR")
    assert sorted(s.StudyInstanceUID for s in srs) == sorted(reference)  # each once
    for ds in srs:
        check_sr(read_sr(_bytes(ds)), reference[ds.StudyInstanceUID])
    keys = archive.of_modality("OT")
    assert len(keys) == 2 * len(studies) and all(k.BurnedInAnnotation == "YES" for k in keys)
    work = tmp_path / "work"
    records = {p.stem: json.loads(p.read_text()) for p in (work / "done").glob("*.json")}
    assert sorted(r["status"] for r in records.values()) == ["failed"] + ["sent"] * len(studies)
    failed = next(r for r in records.values() if r["status"] == "failed")
    assert "no series fits the rule" in failed["reason"] and "\n" not in failed["reason"]
    assert not list((work / "incoming").iterdir())  # images removed once answered
    for line in ("received from 'TESTSCU'", "predicted study", "sent study"):
        assert line in caplog.text


def _bytes(ds):
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_refused_images_and_the_queue_bound(studies, tmp_path, one_thread):
    port = free_port()
    node = ThreadNode(node_config(tmp_path, port, quiet_seconds=600, max_pending_studies=1), port)
    try:
        node.send(files_of(studies[0]))  # the one study the queue holds
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context(CTImageStorage, pydicom.dcmread(files_of(studies[1])[0]).file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="RSNA-PE")
        no_uid = pydicom.dcmread(files_of(studies[1])[0])
        del no_uid.SeriesInstanceUID
        statuses = [assoc.send_c_store(pydicom.dcmread(files_of(studies[1])[0])).Status,
                    assoc.send_c_store(no_uid).Status]
        assoc.release()
    finally:
        node.close()
    assert statuses == [OUT_OF_RESOURCES, 0xC000]
    assert len(list((tmp_path / "work" / "incoming").iterdir())) == 1  # the refused ones not kept


def test_killed_after_predicting_then_restarted_sends_each_result_once(studies, reference, tmp_path):
    down = {"ae_title": "ARCHIVE", "host": "127.0.0.1", "port": free_port()}  # nothing listens
    port = free_port()
    first = NodeProcess(node_config(tmp_path, port, down, retry_seconds=600), tmp_path, 0)
    send = Destination("RSNA-PE", "127.0.0.1", port)
    try:
        send_files(files_of(studies[0]), send, "TESTSCU")
        wait_for(lambda: "not sent" in first.text(), 120, "the first send to fail")
    finally:
        first.kill()  # SIGKILL: no chance to tidy up
    results = tmp_path / "work" / "results"
    assert [d.name for d in results.iterdir()] == [pydicom.dcmread(files_of(studies[0])[0]).StudyInstanceUID]
    archive = Collector()
    second = NodeProcess(node_config(tmp_path, port, archive.destination), tmp_path, 1)
    try:
        wait_for(lambda: archive.of_modality("SR"), 120, "the SR after the restart")
        wait_for(lambda: "sent study" in second.text(), 30, "the send to be logged")
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.kill()
        archive.close()
    (sr,) = archive.of_modality("SR")
    check_sr(read_sr(_bytes(sr)), reference[sr.StudyInstanceUID])
    assert "pending from before" in second.text() and "stopping: 0 studies pending" in second.text()
    assert "predicted study" not in second.text()  # predicted once, before the kill


@pytest.mark.parametrize("key, value, words", [
    ("ae_title", "A" * 17, "AE title"), ("ae_title", "BAD\\AE", "AE title"), ("port", 70000, "port"),
    ("destination", {"ae_title": "X", "host": "h", "port": 0}, "destination"), ("quiet_seconds", -1, "quiet_seconds"),
    ("max_pending_studies", 0, "max_pending_studies"), ("allowed_callers", ["ok", "x" * 20], "allowed_callers")])
def test_bad_settings_are_one_line(tmp_path, key, value, words):
    with pytest.raises(ConfigError) as err:
        keys = {"port": 0, key: value}
        dicom_node.main(["-c", str(node_config(tmp_path, keys.pop("port"), **keys))])
    assert words in str(err.value) and "\n" not in str(err.value)


def test_settings_read_from_the_shipped_config():
    from rsna_pe.core.config import CONFIG_DIR, load_config
    s = Settings.from_config(load_config(CONFIG_DIR / "dicom_node.yml"))
    assert s.destination == Destination("ORTHANC", "127.0.0.1", 4242) and s.host == "127.0.0.1"


NODE_ONNX = """
import json, socket, sys, threading, time
from pathlib import Path
import dicom_node
from rsna_pe.serve.send import Destination, send_files
config, port, files, done = sys.argv[1], int(sys.argv[2]), sys.argv[3].split("|"), Path(sys.argv[4])
stop = threading.Event()
node = threading.Thread(target=dicom_node.main, args=(["-c", config],), kwargs={"stop": stop})
node.start()
for _ in range(600):  # until the node listens
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", port)) == 0:
            break
    time.sleep(0.1)
send_files([Path(f) for f in files], Destination("RSNA-PE", "127.0.0.1", port), "TESTSCU")
end = time.monotonic() + 120
while time.monotonic() < end and not list(done.glob("*.json")):
    time.sleep(0.2)
stop.set()
node.join()
print(json.dumps(sorted(m for m in ("torch", "timm", "captum") if m in sys.modules)))
"""


def test_node_with_onnx_runtime_imports_no_torch(studies, reference, tmp_path):
    bundle = tmp_path / "bundle"
    export_models.main(["-c", str(CONFIG_DIR / "demo" / "inference.yml"), "--from-bundle", str(LEGACY / "bundle"),
                        "--onnx", "--out", str(bundle)])
    archive, port = Collector(), free_port()
    config = node_config(tmp_path, port, archive.destination, bundle=str(bundle), runtime="onnx", onnx_threads=1)
    files = "|".join(str(f) for f in files_of(studies[0]))
    try:
        run = subprocess.run([sys.executable, "-c", NODE_ONNX, str(config), str(port), files,
                              str(tmp_path / "work" / "done")], env=SUB_ENV, capture_output=True, text=True,
                             timeout=300)
    finally:
        archive.close()
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []  # no torch, timm or captum
    (sr,) = archive.of_modality("SR")
    pred = reference[sr.StudyInstanceUID]
    exam = {m.name.meaning: m.value for m in read_sr(_bytes(sr)).content.get_image_measurement_groups()[0]
            .get_measurements()}
    np.testing.assert_allclose([exam[k] for k in EXAM_LABELS], [pred["exam"][k] for k in EXAM_LABELS], atol=1e-4)
    assert len(archive.of_modality("OT")) == 2  # key images without an overlay: maps need torch
