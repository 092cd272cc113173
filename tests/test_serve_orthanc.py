"""The DICOM node against a real archive: Orthanc on loopback ports with the node registered as a
modality. A study uploaded to Orthanc is sent to the node by Orthanc's REST call; the SR and key
images arrive back in Orthanc and, read through its REST API, hold predict_study's values. A node
killed while a study arrives, started again and sent the study again, leaves exactly one SR.
Orthanc comes from Debian (`apt-get install orthanc`; .ci/run installs it)."""

import pytest
from support.dicom_node import (
    NodeProcess,
    Orthanc,
    ThreadNode,
    check_sr,
    free_port,
    node_config,
    read_sr,
    reference_predictions,
    valid_studies,
    wait_for,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, one_thread):
    """Orthanc holding the three studies, a node port it knows, predict_study's predictions."""
    tmp = tmp_path_factory.mktemp("orthanc")
    port = free_port()
    archive = Orthanc(tmp, port)
    studies = valid_studies(tmp)
    ids = archive.upload(sorted(studies.rglob("*.dcm")))
    preds = reference_predictions(studies, tmp)
    yield archive, port, ids, preds
    archive.close()


def _study_uid(archive, study):
    return archive.get(f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]


def test_round_trip_through_orthanc(setup, tmp_path, one_thread):
    archive, port, ids, preds = setup
    node = ThreadNode(node_config(tmp_path, port, archive.destination), port)
    try:
        archive.call("POST", "/modalities/node/echo", {})  # Orthanc's C-ECHO (an error raises)
        for study in ids[:2]:
            job = archive.call("POST", "/modalities/node/store", {"Resources": [study], "Synchronous": True})
            assert job["FailedInstancesCount"] == 0 and job["InstancesCount"] > 0
        for study in ids[:2]:
            wait_for(lambda: archive.instances(study, "SR") and len(archive.instances(study, "OT")) == 2, 120,
                     "the SR and two key images in Orthanc")
    finally:
        node.close()
    for study in ids[:2]:
        (sr_id,) = archive.instances(study, "SR")
        sr = read_sr(archive.get(f"/instances/{sr_id}/file"))
        check_sr(sr, preds[_study_uid(archive, study)])
        for key_id in archive.instances(study, "OT"):
            tags = archive.get(f"/instances/{key_id}/simplified-tags")
            assert tags["ImageType"].startswith("DERIVED\\SECONDARY") and tags["BurnedInAnnotation"] == "YES"


def test_node_killed_while_a_study_arrives_leaves_one_sr(setup, tmp_path):
    archive, port, ids, preds = setup
    study = ids[2]
    config = node_config(tmp_path, port, archive.destination, quiet_seconds=3.0)
    first = NodeProcess(config, tmp_path, 0)
    incoming = tmp_path / "work" / "incoming"
    try:
        archive.call("POST", "/modalities/node/store", {"Resources": [study], "Asynchronous": True})
        wait_for(lambda: incoming.is_dir() and any(incoming.rglob("*.dcm")), 60, "the first image at the node")
    finally:
        first.kill()  # SIGKILL while the study arrives, before the quiet time ends
    assert not archive.instances(study, "SR")
    second = NodeProcess(config, tmp_path, 1)
    try:  # the archive sends the study again (a failed job is retried)
        archive.call("POST", "/modalities/node/store", {"Resources": [study], "Synchronous": True})
        wait_for(lambda: "sent study" in second.text(), 120, "the node to send its results")
        assert second.stop() == 0
    finally:
        if second.proc.poll() is None:
            second.kill()
    (sr_id,) = archive.instances(study, "SR")  # exactly one
    check_sr(read_sr(archive.get(f"/instances/{sr_id}/file")), preds[_study_uid(archive, study)])
    assert "pending from before" in second.text() and second.text().count("predicted study") == 1
