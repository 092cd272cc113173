"""The DICOM node's work folder: received images are kept until their study's results are sent,
so a node killed at any moment and started again finds every unfinished study.

    <work>/incoming/<study>/<series>/<sop>.dcm  images as received, each written atomically
    <work>/results/<study>/                     the study's outputs (prediction.json, report.png,
                                                viewer.html, dicom/: the SR and key images), made
                                                in a temporary folder and renamed when complete
    <work>/done/<study>.json                    the study is answered: sent, kept locally or failed

A study in ``incoming/`` without its ``done`` record is pending; with ``results/`` it is predicted
but not yet sent. Folder and file names are the UIDs of the headers, each checked by the id rule
(rsna_pe.core.ids) before it touches the disk.
"""
import shutil
from pathlib import Path

from ..core.ids import checked, is_safe
from ..core.io import atomic_path, atomic_write_json, strict_loads


class Spool:
    def __init__(self, work):
        self.work = Path(work)
        self.incoming, self.results, self.done = (self.work / n for n in ("incoming", "results", "done"))
        for d in (self.incoming, self.results, self.done):
            d.mkdir(parents=True, exist_ok=True)

    def store(self, study, series, sop, data):
        """One received image's bytes (a DICOM file: preamble, file meta, data set)."""
        names = [checked(v, kind, "received image") for v, kind in
                 ((study, "StudyInstanceUID"), (series, "SeriesInstanceUID"), (sop, "SOPInstanceUID"))]
        path = self.incoming.joinpath(*names[:2], f"{names[2]}.dcm")
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return path

    def pending(self):
        """The studies received and not yet answered, oldest folder first."""
        studies = [d for d in self.incoming.iterdir() if d.is_dir() and is_safe(d.name)]
        return [d.name for d in sorted(studies, key=lambda d: d.stat().st_mtime) if not self.is_done(d.name)]

    def images(self, study):
        return sorted(p for p in (self.incoming / study).glob("*/*.dcm") if not p.name.startswith("."))

    def is_done(self, study):
        return (self.done / f"{study}.json").is_file()

    def done_record(self, study):
        path = self.done / f"{study}.json"
        return strict_loads(path.read_bytes(), path)

    def has_results(self, study):
        return (self.results / study / "prediction.json").is_file()

    def objects(self, study):
        """The DICOM objects written for the study (the SR first, then the key images)."""
        return sorted((self.results / study / "dicom").glob("*.dcm"), key=lambda p: (not p.name.startswith("SR_"), p.name))

    def finish(self, study, record):
        """The study answered: its record written, then its received images removed (a node
        killed between the two removes them at its next start)."""
        atomic_write_json(self.done / f"{study}.json", record)
        self.forget(study)

    def forget(self, study):
        shutil.rmtree(self.incoming / study, ignore_errors=True)
