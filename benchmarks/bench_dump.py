"""Stage 5 speed: slices/s of the whole dump (npz read -> embeddings npz written).

    python benchmarks/bench_dump.py                          # GPU: 512 px, 8 series x 250 slices
    python benchmarks/bench_dump.py --compile                # + torch.compile (warm-up reported apart)
    python benchmarks/bench_dump.py --size 64 --series 4 --slices 60 --device cpu   # smoke run

Ends with ``dump: R slices/s = P% of ceiling C``: C is the plain forward (benchmarks/ceiling.py)
at the same batch size and precision.

Both ways run in this process on the same npz files and the same checkpoint:
  original: one series at a time, np.load, float32 NCHW on the device, fp32 forward, save;
            no overlap between reading and compute;
  ours:     src/dump_embeddings.py's main(): DataLoader workers read ahead, uint8 to the
            device, channels_last, bf16/fp16 autocast on GPU, fixed-size chunks over
            consecutive series, compile per the config (auto: off at this size) or --compile.
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from ceiling import forward_rate, report

import dump_embeddings  # noqa: E402  (src/ is on the path via _common)
from _common import CONFIG_DIR, add_model_args, fake_runs, paths, sync
from rsna_pe.core.io import atomic_savez
from rsna_pe.core.runtime import pick_device
from rsna_pe.data.images import NPZ_FORMAT, jpeg_params, read_npz_images
from rsna_pe.records import provenance
from rsna_pe.train.checkpoint import load_trained


def write_npz(root, size, n_series, n_slices):
    """Stage 4's npz (JPEG bytes of random slices) and fold csv, with their records."""
    rng = np.random.default_rng(0)
    rows = []
    base = rng.integers(0, 256, size=(n_slices, size, size, 3), dtype=np.uint8)
    blobs = [cv2.imencode(".jpg", im, jpeg_params(95))[1] for im in base]
    npz_root = paths.npz_dir(root / "data", size)
    for s in range(n_series):
        study, series = f"1.2.{s}", f"1.3.{s}"
        order = np.roll(np.arange(n_slices), s)
        offsets = np.concatenate([[0], np.cumsum([len(blobs[i]) for i in order])])
        atomic_savez(paths.series_file(npz_root, study, series), jpeg=np.concatenate([blobs[i] for i in order]),
                     jpeg_offsets=offsets, format=np.array(NPZ_FORMAT), labels=np.zeros((n_slices, 10), np.float32),
                     sop=np.array([f"{s}.{k}" for k in range(n_slices)]))
        rows += [(study, series)] * n_slices
    csv = paths.fold_csv(root / "data", size)
    csv.parent.mkdir(parents=True, exist_ok=True)
    import pandas as pd
    pd.DataFrame(rows, columns=["StudyInstanceUID", "SeriesInstanceUID"]).to_csv(csv, index=False)
    provenance.write(npz_root, provenance.make("make_npz", {"format": NPZ_FORMAT}))
    return [paths.series_file(npz_root, f"1.2.{s}", f"1.3.{s}") for s in range(n_series)]


@torch.inference_mode()
def original(files, ckpt, device, chunk, out):
    model, _ = load_trained(ckpt, device=device)
    for f in files:
        with np.load(f) as z:
            imgs, labels, sop = read_npz_images(z, f), z["labels"], z["sop"]
        outs = []
        for i in range(0, len(imgs), chunk):
            x = torch.from_numpy(imgs[i:i + chunk]).float().to(device)
            outs.append(model.features(x).cpu())
        np.savez(out / f.name, embeddings=torch.cat(outs).numpy(), labels=labels, sop=sop)
    sync(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--series", type=int, default=8)
    p.add_argument("--slices", type=int, default=250)
    add_model_args(p)
    args = p.parse_args()
    device = pick_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dump_"))
    try:
        files = write_npz(tmp, args.size, args.series, args.slices)
        cnn_out, _ = fake_runs(tmp / "output", args.size, variants=("rexnet200_bce",), folds=(0,), rnn=False)
        ckpt = paths.run_dir(cnn_out, "rexnet200_bce", 0) / "best.ckpt"
        n = args.series * args.slices
        print(f"{n} slices ({args.series} series x {args.slices}) at {args.size} px on {device}")

        def ours(root, series_files):
            import os
            cwd = os.getcwd()
            os.chdir(tmp)
            try:
                t = time.perf_counter()
                dump_embeddings.main(["-c", str(CONFIG_DIR / "dump_embeddings" / "rexnet200_bce.yml"),
                                      f"jpeg_size={args.size}", f"ckpt_path={ckpt}", f"dump_root={root}",
                                      f"batch_size={args.chunk}", f"num_workers={args.workers}",
                                      f"device={device.type}", f"compile={'true' if args.compile else 'auto'}"])
                sync(device)
                return time.perf_counter() - t
            finally:
                os.chdir(cwd)

        (tmp / "orig").mkdir()
        original(files[:1], ckpt, device, args.chunk, tmp / "orig")  # warm-up (cudnn, allocator)
        t = time.perf_counter()
        original(files, ckpt, device, args.chunk, tmp / "orig")
        t_orig = time.perf_counter() - t
        t_warm = ours(tmp / "dump_warm", files)   # includes compile when --compile
        t_ours = ours(tmp / "dump", files)
        print(f"original way : {n / t_orig:8.1f} slices/s")
        print(f"dump_embeddings: {n / t_ours:8.1f} slices/s  ({t_orig / t_ours:.2f}x)   "
              f"first run incl. warm-up/compile: {t_warm:.1f} s")
        ceiling = forward_rate(device, args.size, args.chunk, compile=args.compile, steps=args.ceiling_steps)
        report("dump" + (" +compile" if args.compile else ""), n / t_ours, ceiling,
               extra=f" (plain forward, batch {args.chunk}); {t_orig / t_ours:.2f}x the original's way")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
