"""Stage 7's DICOM objects on the demo's test studies: every SR and key image checked by dciodvfy
and read back against submission.csv.

    python benchmarks/dicom_objects_demo.py WORKSPACE [--out DIR] [--key-images 4]

WORKSPACE: a finished ./run_demo.sh workspace (its models and data/test). Stage 7 runs again
there into ``--out`` (default WORKSPACE/output/dicom_check) with ``dicom_out`` on, deterministic
UIDs and key images; then each object goes through dciodvfy (Debian's dicom3tools) and each SR's
values are compared with the submission's rows. Prints a summary (json) and exits 1 when any
object has a dciodvfy error, a value differs by more than 1e-6 or an image is not referenced.
"""
import argparse
import collections
import json
import re
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pandas as pd
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from rsna_pe.core.labels import EXAM_LABELS  # noqa: E402


def run_stage7(ws, out, key_images):
    subprocess.run([sys.executable, str(REPO / "src" / "inference.py"), "-c", str(REPO / "configs/demo/inference.yml"),
                    f"output_dir={out / 'inference'}", f"dicom_out={out / 'dicom'}", "deterministic_uids=true",
                    f"dicom_key_images={key_images}", "overwrite=true"], cwd=ws, check=True)


def dciodvfy(files):
    """-> ({file: error lines}, Counter of warning texts)."""
    errors, warnings = {}, collections.Counter()
    for f in files:
        r = subprocess.run(["dciodvfy", str(f)], capture_output=True, text=True)
        lines = (r.stdout + r.stderr).splitlines()
        errs = [ln for ln in lines if ln.startswith("Error")]
        if errs:
            errors[str(f)] = errs
        # the element path and the value vary per object; the message is what matters
        warnings.update(re.sub(r"^Warning - (</[^>]*>)*\s*", "", re.sub(r"\[\d+\]", "", ln))
                        for ln in lines if ln.startswith("Warning"))
    return errors, warnings


def compare(dicom_dir, submission, test_csv):
    sub = pd.read_csv(submission).set_index("id")["label"]
    sops = pd.read_csv(test_csv, dtype=str).groupby("StudyInstanceUID")["SOPInstanceUID"].apply(set)
    worst, unreferenced, keys = 0.0, 0, 0
    for sr_path in sorted(dicom_dir.rglob("SR_*.dcm")):
        sr = hd.sr.srread(sr_path)
        study = sr.StudyInstanceUID
        exam_group, slice_group = sr.content.get_image_measurement_groups()
        exam = {m.name.meaning: m.value for m in exam_group.get_measurements()}
        worst = max(worst, max(abs(exam[k] - sub[f"{study}_{k}"]) for k in EXAM_LABELS))
        per_image = {m.referenced_images[0].referenced_sop_instance_uid: m.value
                     for m in slice_group.get_measurements()}
        worst = max(worst, max(abs(v - sub[sop]) for sop, v in per_image.items()))
        unreferenced += len(sops[study] - set(per_image))
        for sc_path in sr_path.parent.glob("SC_*.dcm"):
            sc = pydicom.dcmread(sc_path, stop_before_pixels=True)
            keys += 1
            unreferenced += sc.SourceImageSequence[0].ReferencedSOPInstanceUID not in sops[study]
    return {"srs": len(list(dicom_dir.rglob("SR_*.dcm"))), "key_images": keys, "studies": len(sops),
            "max_abs_difference_to_submission": float(worst), "images_not_referenced": int(unreferenced)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("workspace", type=Path)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--key-images", type=int, default=4)
    args = p.parse_args()
    ws = args.workspace.resolve()
    out = (args.out or ws / "output" / "dicom_check").resolve()
    run_stage7(ws, out, args.key_images)
    files = sorted((out / "dicom").rglob("*.dcm"))
    errors, warnings = dciodvfy(files)
    summary = {"objects": len(files), "objects_with_dciodvfy_errors": len(errors),
               "first_errors": dict(list(errors.items())[:3]), "dciodvfy_warnings": dict(warnings),
               **compare(out / "dicom", out / "inference" / "submission.csv", ws / "data" / "test.csv")}
    print(json.dumps(summary, indent=1))
    ok = (not errors and summary["max_abs_difference_to_submission"] <= 1e-6
          and not summary["images_not_referenced"] and summary["srs"] == summary["studies"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
