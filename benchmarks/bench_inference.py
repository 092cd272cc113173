"""Stage 7 speed: test slices/s end to end (DICOM read -> six CNN+LSTM pairs -> predictions).

    python benchmarks/bench_inference.py                      # GPU: 512 px, 8 studies x 200 slices
    python benchmarks/bench_inference.py --compile
    python benchmarks/bench_inference.py --size 64 --studies 3 --slices 40 --device cpu   # smoke run

Same generated DICOM studies, same six randomly initialised pairs, one process:
  original: one study at a time, read, then per pair fp32 NCHW CNN in chunks and the LSTM,
            no overlap between decoding and model work;
  ours:     inference.py's loop: DataLoader workers decode the next studies while the models
            run, uint8 to the device, channels_last, bf16/fp16 autocast, on GPU fixed-size
            chunks over consecutive studies and everything on the device until the
            probabilities; compile only with --compile (the config's auto is off at this size).
A warm-up pass over two studies (compile, cudnn autotune) is timed apart from the steady rate.
Ends with ``inference: R slices/s = P% of ceiling C``: C is the plain forward rate
(benchmarks/ceiling.py, same batch size and precision) divided by the number of pairs.
"""
import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ceiling import forward_rate, report

from _common import add_model_args, fake_pairs, fake_test_set, sync
from inference import predict_all  # noqa: E402
from rsna_pe.core.runtime import pick_device
from rsna_pe.data.dicom import read_series_images
from rsna_pe.infer.ensemble import Ensemble
from rsna_pe.metric import postprocess  # noqa: E402
from rsna_pe.train.checkpoint import load_trained


@torch.inference_mode()
def original(pairs, studies, dirs, size, device, chunk):
    models = [(load_trained(c, device)[0], load_trained(r, device)[0]) for c, r in pairs]
    for s in studies:
        _, images = read_series_images(dirs[s], [size])
        exams, imgs = [], []
        for cnn, rnn in models:
            x_all = torch.from_numpy(images[size])
            feats = torch.cat([cnn.features(x_all[i:i + chunk].float().to(device)).cpu()
                               for i in range(0, len(x_all), chunk)])
            il, el = rnn(feats[None].to(device), torch.tensor([len(feats)]))
            img = torch.sigmoid(il[0]).cpu().numpy()
            exams.append(postprocess(torch.sigmoid(el).cpu().numpy(), [img])[0])
            imgs.append(img)
        postprocess(np.mean(exams, 0)[None], [np.mean(imgs, 0)])
    sync(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=512, help="CNN input and DICOM matrix size")
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--pairs", type=int, default=6, help="CNN + LSTM pairs (the recipe has six)")
    add_model_args(p)
    args = p.parse_args()
    device = pick_device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="bench_inference_"))
    try:
        studies, dirs, expected = fake_test_set(tmp / "data", args.studies + 2, args.slices, args.size)
        warm, main_set = studies[:2], studies[2:]
        pairs = fake_pairs(tmp / "output", args.size, args.pairs)
        n = sum(len(expected[s]) for s in main_set)
        print(f"{n} slices ({len(main_set)} studies) at {args.size} px, {len(pairs)} pairs, on {device}")

        original(pairs, warm[:1], dirs, args.size, device, args.chunk)  # warm-up
        t = time.perf_counter()
        original(pairs, main_set, dirs, args.size, device, args.chunk)
        t_orig = time.perf_counter() - t

        ens = Ensemble(pairs, device, chunk=args.chunk, amp=True, channels_last=True, compile=args.compile)
        t = time.perf_counter()
        predict_all(ens, warm, dirs, expected, args.workers)
        sync(device)
        t_warm = time.perf_counter() - t
        t = time.perf_counter()
        results, errors = predict_all(ens, main_set, dirs, expected, args.workers)
        sync(device)
        t_ours = time.perf_counter() - t
        assert not errors, errors
        print(f"original way: {n / t_orig:8.1f} slices/s")
        print(f"inference   : {n / t_ours:8.1f} slices/s steady ({t_orig / t_ours:.2f}x); "
              f"warm-up pass (2 studies{', compile' if args.compile else ''}): {t_warm:.1f} s")
        # Each slice goes through every pair's CNN once (TTA off): the ceiling is the plain
        # forward rate shared by the pairs.
        ceiling = forward_rate(device, args.size, args.chunk, compile=args.compile, steps=args.ceiling_steps)
        report("inference" + (" +compile" if args.compile else ""), n / t_ours, ceiling / len(pairs),
               extra=f" (plain forward, batch {args.chunk}, / {len(pairs)} pairs); "
                     f"{t_orig / t_ours:.2f}x the original's way")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
