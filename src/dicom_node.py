"""The DICOM node: receive studies, predict each, send the SR and key images to an archive.

    python src/dicom_node.py [-c configs/dicom_node.yml] [key=value ...]

A storage SCP (pynetdicom) that answers C-ECHO and C-STORE; once no image of a study has arrived
for ``quiet_seconds`` it predicts the study's CTPA series (the ``series_selection`` rule), writes
prediction.json, report, viewer and the DICOM objects in ``work_dir/results/<study>/`` and sends
the objects to ``destination``. Received images are kept until their results are sent: a node
killed at any moment and started again takes up every pending study (rsna_pe.serve.spool).
SIGTERM or Ctrl-C stops it after the study in hand (docs/dicom.md).
"""
import signal
import threading

from rsna_pe.core import cli
from rsna_pe.core.runtime import HOST, pick_device
from rsna_pe.infer.ensemble import load_ensemble, uses_onnx
from rsna_pe.serve.node import Node, Settings


def main(argv=None, stop=None):
    """``stop``: a threading.Event that ends the node (tests); else SIGTERM and SIGINT do."""
    cfg, _ = cli.parse(__doc__.splitlines()[0], default="dicom_node.yml", argv=argv)
    settings = Settings.from_config(cfg)  # checked before the models load
    # runtime: onnx predicts with ONNX Runtime on the CPU, without importing torch
    node = Node(cfg, load_ensemble(cfg, HOST if uses_onnx(cfg) else pick_device(cfg["device"])), settings)
    if stop is None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    node.start()
    try:
        node.run(stop)
    finally:
        node.shutdown()


if __name__ == "__main__":
    cli.run(main)
