"""Stage 4's npz: bytes against its JPEG set, and the loader path's speed per core.

    python benchmarks/bench_npz.py [--data WORKSPACE] [--size 512] [--net-size 384 ...]

Where the workspace (default: a temporary folder) holds no npz set yet, it generates the
synthetic set there (20 train studies of 30-40 slices, 512 matrix) and runs stages 1, 2 and 4
with jpeg_size=--size. Reports the JPEG
set's and the npz set's bytes (and the old layout's, decoded uint8 arrays), extrapolated to the
real training set, then slices/s of the loader path as stage 5 runs it in one DataLoader worker
(np.load + JPEG decode, + resize to each --net-size), in one process on one core (the best of
--repeat passes, against other load), and how many such workers keep one GPU busy at
--gpu-rate slices/s.
"""
import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rsna_pe.core import paths
from rsna_pe.data.images import read_npz_images

REAL_SLICES = 1_790_594  # the competition's training images (7,279 studies)


def make_workspace(ws, size):
    """Synthetic data and stages 1, 2, 4 at ``size`` in ``ws``."""
    def run(*cmd):
        subprocess.run([sys.executable, *map(str, cmd)], cwd=ws, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run(ROOT / "src" / "make_synthetic_data.py", "data", "--n-train", 20, "--n-test", 2,
        "--slices", 30, 40, "--matrix", 512)
    for stage, extra in (("make_image.py", []), ("make_csv.py", ["n_splits=5"]), ("make_npz.py", [])):
        run(ROOT / "src" / stage, f"jpeg_size={size}", *extra)  # 20 studies: 5 folds, not 15


def sizes(data, size):
    jpegs = list(paths.jpeg_dir(data, size).rglob("*.jpg"))
    npz = list(paths.npz_dir(data, size).rglob("*.npz"))
    jpeg_bytes, npz_bytes = sum(p.stat().st_size for p in jpegs), sum(p.stat().st_size for p in npz)
    old_bytes = len(jpegs) * 3 * size * size  # decoded uint8 (S, 3, H, W), the original layout
    n = len(jpegs)
    print(f"{n} slices in {len(npz)} series at {size} px")
    for name, b in (("JPEG set", jpeg_bytes), ("npz set", npz_bytes), ("old npz (imgs)", old_bytes)):
        print(f"  {name:15s} {b / 2**20:9.1f} MiB  {b / n / 1024:7.1f} KiB/slice  "
              f"{b / jpeg_bytes:5.2f}x JPEG  real set ({REAL_SLICES:,} slices): "
              f"{b / n * REAL_SLICES / 1e9:7.1f} GB")
    return npz


def load_rate(files, net_size, repeat):
    """Slices per second of np.load + decode (+ resize) in one process, cv2 on one thread: per
    CPU second (what one core gives, whatever else runs) and per wall second; best pass."""
    import cv2
    cv2.setNumThreads(1)
    resize = None
    if net_size:
        from rsna_pe.infer.embed import resize_stack
        resize = resize_stack
    cpu = wall = 0.0
    for _ in range(repeat):
        n, c0, w0 = 0, time.process_time(), time.perf_counter()
        for f in files:
            with np.load(f) as z:
                imgs = read_npz_images(z, f)
            if resize is not None:
                imgs = resize(imgs, net_size)
            n += len(imgs)
        cpu = max(cpu, n / (time.process_time() - c0))
        wall = max(wall, n / (time.perf_counter() - w0))
    return cpu, wall


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, help="workspace (kept; made there when it has no npz set)")
    p.add_argument("--size", type=int, default=512, help="jpeg_size of the sets (default 512)")
    p.add_argument("--net-size", type=int, nargs="*", default=[384, 256],
                   help="network input sizes to also resize to (default 384 256)")
    p.add_argument("--repeat", type=int, default=3, help="timed passes over the npz set (best counts)")
    p.add_argument("--gpu-rate", type=float, default=2000.0,
                   help="slices/s one GPU embeds per model (H200, bf16: about 2,000)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_npz_") as tmp:
        ws = args.data or Path(tmp)
        if not paths.npz_dir(ws / "data", args.size).is_dir():
            ws.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            make_workspace(ws, args.size)
            print(f"synthetic set and stages 1, 2, 4: {time.perf_counter() - t:.0f} s")
        files = sizes(ws / "data", args.size)
        load_rate(files, 0, 1)  # page cache and decoder warm for every timing
        print(f"loader path, one process (workers per GPU at {args.gpu_rate:.0f} slices/s per model):")
        for net in [0, *args.net_size]:
            cpu, wall = load_rate(files, net, args.repeat)
            what = f"decode at {args.size}" + (f" + resize to {net}" if net else "")
            print(f"  {what:29s}: {cpu:6.0f} slices per CPU s ({wall:6.0f} per wall s) -> "
                  f"{math.ceil(args.gpu_rate / cpu)} workers")

if __name__ == "__main__":
    main()
