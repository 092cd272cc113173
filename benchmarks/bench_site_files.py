"""Stage 7 with a site's files: what recording the scanner fields costs, that a submission
without a calibration does not change, and a bundle's calibration applied.

    python benchmarks/bench_site_files.py WORK_DIR [--reference OTHER_SRC] [--studies 8]
        [--slices 40 60] [--matrix 512] [--repeats 3]

1. Per series of a generated test set (the second site's scanner, docs/synthetic.md): the
   seconds stage 7 spends reading it (read_series_images: every file read and decoded), what
   taking the scanner fields from its first header adds (fields_of on a header already read),
   and, for comparison, reading them apart (read_series_acquisition: one more header read).
2. Stage 7 on that set with the legacy test bundle (tests/fixtures/legacy/bundle: tiny models,
   so reading dominates), on the CPU, ``--repeats`` times: this code and, with ``--reference``,
   the ``src/`` folder of another version (e.g. a ``git archive`` of the commit before),
   alternating; wall seconds per run (process start and model loading included) and their
   submission.csv compared byte for byte.
3. The same bundle with a calibration added (export_models.py --from-bundle): stage 7 applies
   it (how many of the submission's values changed) and records it.
"""
import argparse
import filecmp
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import pandas as pd  # noqa: E402
import pydicom  # noqa: E402

from rsna_pe.data.acquisition import fields_of, read_series_acquisition  # noqa: E402
from rsna_pe.data.dicom import read_series_images, series_files  # noqa: E402

LEGACY = ROOT / "tests" / "fixtures" / "legacy" / "bundle"
DEMO = ROOT / "configs" / "demo" / "inference.yml"
SHIFT = ["--noise-scale", "2", "--hu-offset", "50", "--thickness-factor", "1.5", "--sharpen", "1",
         "--manufacturer", "OTHERVENDOR", "--model", "SYNTH-CT 2", "--kvp", "80", "--kernel", "SHARP"]
CALIBRATION = {"format": "rsna-pe-calibration", "format_version": 1, "method": "platt",
               "labels": {"pe_present": {"slope": 2.0, "intercept": -0.5},
                          "negative_exam_for_pe": {"slope": 2.0, "intercept": 0.5}}}


def _run(cmd, env=None):
    """Wall seconds of a command; its log is shown only when it fails."""
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t


def reading(data, matrix):
    """Seconds per series: reading it as stage 7 does, fields_of, a separate header read."""
    dirs = sorted(d for d in (data / "test").glob("*/*") if d.is_dir())
    read, fields, apart = [], [], []
    for d in dirs:
        t = time.perf_counter()
        read_series_images(d, [matrix])
        read.append(time.perf_counter() - t)
        ds = pydicom.dcmread(series_files(d)[0])
        t = time.perf_counter()
        for _ in range(1000):
            fields_of(ds)
        fields.append((time.perf_counter() - t) / 1000)
        t = time.perf_counter()
        read_series_acquisition(d)
        apart.append(time.perf_counter() - t)
    n = sum(len(series_files(d)) for d in dirs)
    print(f"1. {len(dirs)} series, {n} files, {matrix} px: per series (median) read and decode "
          f"{statistics.median(read):.3f} s; fields_of {statistics.median(fields) * 1e6:.1f} us "
          f"({statistics.median(fields) / statistics.median(read):.5%} of the read); a separate header "
          f"read {statistics.median(apart) * 1e3:.2f} ms")


def stage7(src, data, out, bundle, env):
    return _run([sys.executable, str(src / "inference.py"), "-c", str(DEMO), f"data_dir={data}",
                 f"bundle={bundle}", f"output_dir={out}", "num_workers=0"], env)


def end_to_end(work, data, reference, repeats):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}
    versions = {"this code": ROOT / "src", **({"reference": Path(reference).resolve()} if reference else {})}
    times = {k: [] for k in versions}
    for r in range(repeats):
        for name, src in versions.items():
            times[name].append(stage7(src, data, work / f"{name.replace(' ', '_')}.{r}", LEGACY, env))
    for name, ts in times.items():
        print(f"2. stage 7, {name}: {' '.join(f'{t:.2f}' for t in ts)} s (median {statistics.median(ts):.2f})")
    if reference:
        same = filecmp.cmp(work / "this_code.0" / "submission.csv", work / "reference.0" / "submission.csv",
                           shallow=False)
        print(f"2. submission.csv of this code and of the reference: {'identical' if same else 'DIFFERENT'} bytes")
    acq = pd.read_csv(work / "this_code.0" / "acquisition.csv", dtype=str)
    print("2. acquisition.csv:\n" + acq.to_string(index=False))
    return env


def calibrated(work, data, env):
    cal = work / "calibration.json"
    cal.write_text(json.dumps(CALIBRATION))
    b = work / "calibrated_bundle"
    _run([sys.executable, str(ROOT / "src" / "export_models.py"), "-c", str(DEMO), "--from-bundle", str(LEGACY),
          "--calibration", str(cal), "--out", str(b), "--overwrite"], env)
    t = stage7(ROOT / "src", data, work / "calibrated", b, env)
    sub = [pd.read_csv(work / d / "submission.csv").set_index("id")["label"] for d in ("this_code.0", "calibrated")]
    changed = (sub[0] - sub[1].reindex(sub[0].index)).abs() > 1e-9
    rec = json.loads((work / "calibrated" / "record.json").read_text())
    print(f"3. stage 7 with the calibrated bundle: {t:.2f} s; {int(changed.sum())} of {len(changed)} values "
          f"changed; record: calibration_sha256 {rec['params']['calibration_sha256'][:16]}..., "
          f"{rec['info']['calibration']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("work", type=Path, help="folder for the generated set and the outputs")
    p.add_argument("--reference", help="src/ folder of another version, run on the same set")
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--slices", type=int, nargs=2, default=(40, 60))
    p.add_argument("--matrix", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "data"
    _run([sys.executable, str(ROOT / "src" / "make_synthetic_data.py"), str(data), "--n-train", "0",
          "--n-test", str(args.studies), "--slices", *map(str, args.slices), "--matrix", str(args.matrix),
          "--seed", "3", "--workers", "1", *SHIFT])
    reading(data, args.matrix)
    env = end_to_end(args.work, data, args.reference, args.repeats)
    calibrated(args.work, data, env)


if __name__ == "__main__":
    main()
