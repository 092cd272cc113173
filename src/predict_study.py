"""One study (or every study of a split folder), raw DICOM -> PE probabilities, report, viewer.

    python src/predict_study.py SERIES_DIR [-c configs/inference.yml] [--out DIR] [key=value ...]
    python src/predict_study.py data/test --out DIR      # every study under it, any tree

Uses the same ensemble (run folders, or ``bundle=DIR``), reading, post-processing and a
bundle's calibration as inference.py; prediction.json also holds the series' scanner fields
(``acquisition``, no patient tag) and the calibration applied. DICOM files are found by
content in any folder tree, grouped by study and series, and one series per study is
predicted by the ``series_selection`` rule (rsna_pe.data.discovery, docs/dicom.md). For a folder holding one study's files itself (a series folder) it prints the
nine exam probabilities and the slices most likely to show PE, and writes
``<out>/prediction.json``, ``<out>/report.png`` (probability along z, exam bars, the top slices
with their activation maps) and ``<out>/viewer.html`` (docs/viewer.md). For any other tree (a
split folder, an archive's export) it writes those per study in ``<out>/<name>/`` and
``<out>/index.html``, studies sorted by P(PE); ``<name>`` is the study's StudyInstanceUID where
that is a safe folder name, else ``study-<k>`` (never an input folder's name: it may hold a
patient's name). A study that fails, for whatever reason, is listed in the index and the others
go on; so is a folder of files that cannot be read.
Activation maps (Grad-CAM, rsna_pe.viz.cam) are made for the ``--cam-top-k`` most probable slices,
or all with ``--cam-all``. ``--dicom-out DIR`` also writes, per series, a DICOM structured report
(TID 1500) and key images into the source study (rsna_pe.viz.dicom_out, docs/dicom.md).
With ``runtime=onnx`` a bundle's ONNX models run with ONNX Runtime on the CPU without torch:
the same outputs, less the activation maps (the pages and the report say so, key images carry
no overlay).
"""
import logging
import re
from pathlib import Path

from rsna_pe.core import cli
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.ids import is_safe
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.core.runtime import HOST, pick_device
from rsna_pe.data.discovery import discover
from rsna_pe.infer.ensemble import load_ensemble, uses_onnx
from rsna_pe.serve.study import dicom_options, message, one_line, predict_series
from rsna_pe.viz.viewer import PREVIEW_SIZE, write_index

log = logging.getLogger("predict_study")


# Files the run writes beside the studies' folders: no study may be named like one.
RESERVED = {"index.html"}


def output_names(uids):
    """Each study's output folder and name on the pages, from its StudyInstanceUID (None: a
    folder of unreadable files): the UID where it is a safe folder name (rsna_pe.core.ids), else
    ``study-<k>`` (k: its place in the run's order, by first file). Input folder and file names
    never appear: they may hold a patient's name."""
    fallback = [f"study-{k + 1}" for k in range(len(uids))]
    taken = set(fallback) | RESERVED
    return [u if u is not None and is_safe(u) and u not in taken else f for u, f in zip(uids, fallback)]


def page_reason(e, root, files=()):
    """``one_line(e)`` for a page: every path, file and folder name replaced by "…" (those of
    ``root``, the input, and of ``files``, the study's, down from it)."""
    root = Path(root)
    names = {str(root), str(root.resolve()), root.name}
    for f in map(Path, files):
        names |= {str(f.parent), str(f.parent.resolve())}
        names |= {n for p in (f.relative_to(root) if f.is_relative_to(root) else f).parts
                  for n in (p, Path(p).stem)}
    # Names replaced in the message as raised, before whitespace is squashed: a name holding a
    # tab or two spaces would no longer match afterwards.
    text = message(e)
    for name in sorted((n for n in names if len(n) > 1), key=len, reverse=True):  # "a" tells nothing
        text = text.replace(name, "…")
    text = " ".join(text.split())
    return re.sub(r"[^\s:;,()'\"]*/[^\s:;,()'\"]*", "…", text)  # any other path (a config's, ...)


def print_study(name, row, out):
    width = max(map(len, EXAM_LABELS))
    img = row["img"]
    print(f"{name}: {row['slices']} slices, PE {'present' if row['max_prob'] > 0.5 else 'absent'}")
    for k, v in row["exam"].items():
        print(f"  {k:<{width}} {v:.3f}")
    print("  most suspicious slices (z order: prob): " + ", ".join(f"{k}: {img[k]:.3f}" for k in row["top"]))
    print(f"wrote {out / 'prediction.json'}, {out / 'report.png'} and {out / 'viewer.html'}")


def predict_one(ens, entry, root, out, args):
    """One study of a tree (or a folder of unreadable files: rsna_pe.data.discovery), written to
    ``out``: -> its index row; any failure (whatever its type) is logged and becomes the row's
    one-line reason, without paths."""
    try:
        row = predict_series(ens, entry.to_predict().files, out, args, entry.skipped)
        print_study(entry.where, row, out)
        return {**row, "href": f"{out.name}/viewer.html"}
    except Exception as e:
        msg = one_line(e)
        log.warning("%s", msg if msg.startswith(entry.where) else f"{entry.where}: {msg}")
        return {"study": out.name, "error": page_reason(e, root, entry.files)}


def predict_split(ens, found, out, args):
    """Every study of a tree; a study that fails is listed in the index, not fatal."""
    entries = found.entries()
    rows = [predict_one(ens, entry, found.root, out / name, args)
            for entry, name in zip(entries, output_names([e.uid for e in entries]))]
    write_index(out / "index.html", rows)
    print(f"wrote {out / 'index.html'} ({len(rows)} studies)")
    failed = [e.where for e, r in zip(entries, rows) if "error" in r]
    if failed:
        raise PipelineError(f"{len(failed)} of {len(rows)} studies failed (first: {failed[0]}); "
                            f"see {out / 'index.html'}")


def _add_args(p):
    p.add_argument("series_dir", type=Path, help="one series' folder, a split folder of "
                   "<study>/<series>/ folders, or any tree of DICOM files (an archive's export)")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default: output/predict_study/<folder name>)")
    p.add_argument("--cam-top-k", type=int, default=8, help="activation maps for the k most "
                   "probable slices (0: none)")
    p.add_argument("--cam-all", action="store_true", help="activation maps for every slice")
    p.add_argument("--cam-batch", type=int, default=16, help="slices per Grad-CAM pass")
    p.add_argument("--preview-size", type=int, default=PREVIEW_SIZE, help="viewer/report image size")
    p.add_argument("--dicom-out", type=Path, default=None, help="also write DICOM objects here, per "
                   "series: a TID 1500 structured report and key images (docs/dicom.md)")
    p.add_argument("--dicom-key-images", type=int, default=None, help="key images: the k most probable "
                   "slices (default: --cam-top-k)")
    p.add_argument("--dicom-uid-root", default=None, help="root of the UIDs made "
                   "(ends with '.'; default: the config's dicom_uid_root)")
    p.add_argument("--dicom-deterministic-uids", action="store_true", help="UIDs derived from the "
                   "input's UIDs and the models' hashes: a rerun gives the same UIDs (also the "
                   "config's deterministic_uids)")


def main(argv=None):
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=_add_args)
    if not args.series_dir.is_dir():
        raise PipelineError(f"{args.series_dir}: not a folder")
    found = discover(args.series_dir, cfg["series_selection"])
    if not found.entries():
        raise PipelineError(f"{args.series_dir}: no DICOM files in it or its subfolders")
    out = args.out or Path("output/predict_study") / args.series_dir.name
    ens = load_ensemble(cfg, HOST if uses_onnx(cfg) else pick_device(cfg["device"]))
    args.dicom = dicom_options(cfg, ens, args)
    if found.flat and len(found.studies) <= 1:  # one series' (or study's) own folder
        predict_folder(ens, found, out, args)
    else:
        predict_split(ens, found, out, args)


def predict_folder(ens, found, out, args):
    """A folder holding one study's files itself, written to ``out``; an unreadable file or a
    study without a series that fits the rule stops with one line, as any failure does."""
    for unreadable in found.unreadable:
        unreadable.to_predict()  # raises: one line naming the folder and the first file
    study = found.studies[0]
    try:
        row = predict_series(ens, study.to_predict().files, out, args, study.skipped)
    except PipelineError:
        raise
    except Exception as e:  # whatever its type: one line naming the series
        raise PipelineError(f"{found.root}: {one_line(e)}") from e
    print_study(str(found.root), row, out)


if __name__ == "__main__":
    cli.run(main)
