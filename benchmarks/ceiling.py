"""What the GPU stages could reach at best: the plain model, no data loading, same settings.

    python benchmarks/ceiling.py                         # GPU: forward slices/s at 512 px, batch 32..256
    python benchmarks/ceiling.py --device cpu --size 64 --batches 4

The forward ceiling is rexnet_200's pooled features (what stages 5 and 7 run per slice) on a
uint8 batch already on the device, channels_last, bf16/fp16 autocast on GPU, in inference mode;
the training ceiling is the forward and backward pass of a batch already on the device. The
stage benchmarks measure theirs in the same process and print ``report`` lines, e.g.
``dump: 1234 slices/s = 68% of ceiling 1815``.
"""
import argparse
import contextlib
import sys

import torch

from _common import time_calls  # noqa: E402  (puts src/ on the path)
from rsna_pe.core.runtime import amp_settings, pick_device
from rsna_pe.models.cnn import build_cnn

# The recipe's CNN, randomly initialised (no download).
MODEL = dict(backbone="rexnet_200", pretrained=False, pool="gem", gem_p=3.0, gem_eps=1e-6,
             dropout=0.5, hidden=256)


def timed_rate(fn, items_per_call, device, steps, warmup):
    """Calls of ``fn`` per second x ``items_per_call``, after ``warmup`` untimed calls."""
    _, seconds = time_calls(fn, device, steps, warmup)
    return items_per_call * steps / seconds


def forward_rate(device, size, batch, amp=True, compile=False, steps=10, warmup=3, model=None):
    """Slices/s of the plain CNN features: uint8 (batch, 3, size, size) on the device,
    channels_last, the stages' autocast, inference mode; compiled with fixed shapes if asked."""
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = (model or build_cnn(MODEL)).to(device).eval().to(memory_format=torch.channels_last)
    fn = torch.compile(model.features, dynamic=False) if compile else model.features
    x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    dtype = amp_settings(amp, device)[0]
    ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @torch.inference_mode()
    def step():
        with ctx:
            fn(x)
    return timed_rate(step, batch, device, steps, warmup)


def train_rate(fwd, x, y, dtype, steps=10, warmup=3):
    """Images/s of the plain forward and backward pass of ``fwd`` (a model, compiled or not) on
    a batch ``x``, labels ``y`` already on the device: the training step's ceiling (no copy,
    no optimizer)."""
    ctx = torch.autocast(x.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
    lossf = torch.nn.BCEWithLogitsLoss()

    def step():
        with ctx:
            loss = lossf(fwd(x).float(), y)
        loss.backward()
    return timed_rate(step, len(x), x.device, steps, warmup)


def report(name, rate, ceiling, unit="slices/s", extra=""):
    """Print and return the line the GPU suite collects: ``NAME: RATE UNIT = P% of ceiling C``."""
    line = f"{name}: {rate:.0f} {unit} = {100 * rate / ceiling:.0f}% of ceiling {ceiling:.0f}{extra}"
    print(line, flush=True)
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--batches", default="32,64,128,256", help="batch sizes to time, comma-separated")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--no-amp", action="store_true")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    model = build_cnn(MODEL)
    for b in (int(v) for v in a.batches.split(",")):
        rate = forward_rate(device, a.size, b, amp=not a.no_amp, steps=a.steps, model=model)
        print(f"ceiling forward, batch {b:4d}, {a.size} px on {device.type}: {rate:8.1f} slices/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
