"""Stage 1 speed: slices/s of make_image.py against the original's way, same data, same machine.

    python benchmarks/bench_make_image.py [--series 4] [--slices 120] [--workers 0] [--long 1083]

Writes uncompressed 512x512 synthetic CTPA series (so codec cost does not hide ours), then times, each as
a whole process: (a) the original's way, one process: the series read into a float64 volume,
each window stretched by the series' own min/max, scipy.ndimage.zoom(order=1) on the 4-D
volume, cv2.imwrite per slice; (b) src/make_image.py with all cores. Then peak memory (max RSS)
of one worker converting a ``--long``-slice series.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

ORIGINAL = r'''
import sys, glob, os
import numpy as np, pydicom, cv2
from scipy import ndimage
src, dst = sys.argv[1], sys.argv[2]
WINDOWS = [(-600, 1500), (100, 700), (40, 400)]
for series in sorted(glob.glob(os.path.join(src, "*", "*"))):
    dcms = [pydicom.dcmread(f) for f in glob.glob(os.path.join(series, "*.dcm"))]
    dcms.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    slope, intercept = float(dcms[0].RescaleSlope), float(dcms[0].RescaleIntercept)
    vol = np.stack([d.pixel_array for d in dcms]).astype(np.float64) * slope + intercept
    chans = []
    for level, width in WINDOWS:
        x = np.clip(vol, level - width / 2, level + width / 2)
        x = (x - x.min()) / (x.max() - x.min()) * 255
        chans.append(x)
    img = np.stack(chans, axis=-1)
    img = ndimage.zoom(img, (1, 512 / img.shape[1], 512 / img.shape[2], 1), order=1)
    out = os.path.join(dst, *series.split(os.sep)[-2:])
    os.makedirs(out, exist_ok=True)
    for k, d in enumerate(dcms):
        cv2.imwrite(os.path.join(out, f"{k:04d}_{d.SOPInstanceUID}.jpg"), img[k][..., ::-1].astype(np.uint8))
'''


def write_data(root, n_series, n_slices, matrix=512):
    """Synthetic CTPA studies, all uncompressed and all matrix x matrix; returns the slice count."""
    from rsna_pe.synthetic import generate
    generate(root, n_train=n_series, n_test=0, slices=(n_slices, n_slices), matrix=matrix,
             compressed_fraction=0.0, odd_matrix_fraction=0.0, overwrite=True)
    return n_series * n_slices


def timed(cmd, **kw):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, **kw)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--series", type=int, default=4)
    p.add_argument("--slices", type=int, default=120)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--long", type=int, default=1083, help="slices of the memory-check series (0: skip)")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_make_image_"))
    try:
        n = write_data(tmp / "data", args.series, args.slices)
        print(f"{n} slices in {args.series} uncompressed 512x512 series, {os.cpu_count()} cores")
        t_orig = timed([sys.executable, "-c", ORIGINAL, str(tmp / "data" / "train"), str(tmp / "orig")])
        t_ours = timed([sys.executable, str(ROOT / "src" / "make_image.py"), f"workers={args.workers}"],
                       cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"original way: {n / t_orig:7.1f} slices/s ({t_orig:.1f} s)")
        print(f"make_image  : {n / t_ours:7.1f} slices/s ({t_ours:.1f} s)   speed-up {t_orig / t_ours:.1f}x")
        if args.long:
            shutil.rmtree(tmp / "data")
            write_data(tmp / "data", 1, args.long)
            # A fresh parent, so the max RSS of its children is this run's alone.
            probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                     "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                     "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
            out = subprocess.run([sys.executable, "-c", probe, sys.executable,
                                  str(ROOT / "src" / "make_image.py"), "workers=1"],
                                 cwd=tmp, check=True, capture_output=True, text=True).stdout
            print(f"peak RSS converting one {args.long}-slice series (workers=1): {int(out) / 1024:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
