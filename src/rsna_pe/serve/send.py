"""Sending DICOM files to an archive with C-STORE (pynetdicom), as the DICOM node does with its
results. The destination comes from the node's config only, never from a received header."""
import time
from dataclasses import dataclass

import pydicom
from pynetdicom import AE

from ..core.errors import ConfigError, PipelineError

# C-STORE statuses that store the object: success, and the warnings "coerced", "elements
# discarded", "data set does not match SOP class" (PS3.4 B.2.3).
STORED = {0x0000, 0xB000, 0xB006, 0xB007}


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    def __str__(self):
        return f"{self.ae_title}@{self.host}:{self.port}"

    @staticmethod
    def check_ae(value, key):
        """An AE title: 1-16 printable ASCII characters, not only spaces, no backslash."""
        if (not isinstance(value, str) or not 0 < len(value) <= 16 or not value.strip()
                or not all(" " <= c <= "~" and c != "\\" for c in value)):
            raise ConfigError(f"dicom node: {key} {value!r}: an AE title of 1-16 printable ASCII "
                              "characters, no backslash")

    @classmethod
    def from_config(cls, d):
        """``{ae_title, host, port}``; empty or null: no destination (results stay local)."""
        if not d or not d.get("ae_title"):
            return None
        if set(d) != {"ae_title", "host", "port"}:
            raise ConfigError(f"dicom node: destination {d!r}: keys ae_title, host, port")
        cls.check_ae(d["ae_title"], "destination.ae_title")
        if not isinstance(d["port"], int) or not 0 < d["port"] <= 65535 or not isinstance(d["host"], str):
            raise ConfigError(f"dicom node: destination {d!r}: a host name and a port 1-65535")
        return cls(d["ae_title"], d["host"], d["port"])


def send_files(files, dest, calling_ae, timeout=30):
    """C-STORE each file to ``dest`` in one association; -> (files sent, seconds). Any file not
    stored is an error naming it and the status: the caller keeps its inputs and retries."""
    t = time.perf_counter()
    if not files:
        raise PipelineError("no DICOM objects to send")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    for cls_uid, syntax in sorted({_context(f) for f in files}):
        ae.add_requested_context(cls_uid, syntax)
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        raise PipelineError(f"{dest}: no association (refused, aborted or no answer)")
    try:
        for f in files:
            status = assoc.send_c_store(f)
            code = getattr(status, "Status", None)
            if code not in STORED:
                raise PipelineError(f"{dest}: {f.name} not stored (status "
                                    f"{'none' if code is None else hex(code)})")
    finally:
        if assoc.is_established:
            assoc.release()
    return len(files), time.perf_counter() - t


def _context(path):
    meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
