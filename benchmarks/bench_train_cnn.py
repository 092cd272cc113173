"""Stage 3 speed: (a) training steps/s of our step vs the original's, (b) loader img/s.

(a) One process, one device, random data, the same rexnet_200 + GeM + head:
    original: float32 NCHW batch copied to the device, fp16 autocast + GradScaler, no compile;
    ours:     uint8 NHWC batch copied to the device, channels_last, bf16 autocast where the GPU
              has it (else fp16 + scaler); timed without and, where the recipe's
              train.compile resolves to on (auto: CUDA) or with --compile, with torch.compile.
    Both include the host->device copy from pinned memory, as a real step does. Each of ours
    also times its ceiling, the same model's forward+backward on a batch already on the
    device; the last line is the recipe's row: ``train_cnn: R img/s = P% of ceiling C``.
(b) JPEG decode + train augmentation + collation with N DataLoader workers, ours (uint8, one
    thread per worker) vs the original's (float32 CHW per image, library default threads);
    plus a single-process per-image breakdown (where the loader time goes).

    python benchmarks/bench_train_cnn.py                       # GPU: 512 px, batch 32
    python benchmarks/bench_train_cnn.py --device cpu --size 64 --batch 8 --steps 3 \
        --workers 2 --images 256                               # smoke run on a laptop
Prints a table and, with --json FILE, writes the numbers.
"""
import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from ceiling import MODEL, report, train_rate  # noqa: E402

from _common import time_calls  # noqa: E402
from rsna_pe.core.config import CONFIG_DIR, load_config
from rsna_pe.core.runtime import resolve_compile
from rsna_pe.data.slice_data import SliceDataset, build_train_transform, load_slice
from rsna_pe.models.cnn import build_cnn
from rsna_pe.train.loaders import worker_init


# ----------------------------------------------------------------------------- (a) steps
def bench_step(kind, device, size, batch, steps, warmup, compile_):
    torch.manual_seed(0)
    model = build_cnn(MODEL).to(device).train()
    cuda = device.type == "cuda"
    if kind == "original":
        dtype = torch.float16 if cuda else None
        host = torch.rand(batch, 3, size, size).mul_(255)  # the original fed float 0-255
    else:
        model = model.to(memory_format=torch.channels_last)
        dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else None
        host = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8)
    if cuda:
        host = host.pin_memory()
    labels = torch.randint(0, 2, (batch,)).float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    fwd = torch.compile(model) if compile_ else model
    lossf = torch.nn.BCEWithLogitsLoss()

    def step():
        x = host.to(device, non_blocking=True)
        if kind != "original":
            x = x.permute(0, 3, 1, 2)  # channels_last view, normalised inside the model
        y = labels.to(device, non_blocking=True)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            loss = lossf(fwd(x).float(), y)
        if scaler:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)

    warm_s, dt = time_calls(step, device, steps, warmup)
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else 0.0
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    name = kind + (" +compile" if compile_ else "")
    out = dict(name=name, dtype=str(dtype).replace("torch.", "") if dtype else "float32",
               steps_per_s=steps / dt, img_per_s=steps * batch / dt, warmup_s=warm_s, peak_gib=mem)
    if kind != "original":  # the same (compiled) model's forward+backward on a batch already there
        x = host.to(device).permute(0, 3, 1, 2)
        out["ceiling_img_per_s"] = train_rate(fwd, x, labels.to(device), dtype, steps=steps, warmup=1)
    return out


def bench_steps(a, dev, res):
    """(a): the original's step, ours, and ours compiled when the recipe (or --compile) says so;
    ends with the recipe's row against its ceiling."""
    recipe = load_config(CONFIG_DIR / "train_cnn" / "_base.yml")["train"]["compile"]
    compiled = a.compile or resolve_compile(recipe, dev.type)
    runs = [("original", False), ("ours", False)] + ([("ours", True)] if compiled else [])
    res["step"] = [bench_step(k, dev, a.size, a.batch, a.steps, a.warmup, c) for k, c in runs]
    base = res["step"][0]["steps_per_s"]
    print("\n(a) training step        dtype     steps/s    img/s  speed-up  warm-up s  peak GiB  ceiling img/s")
    for r in res["step"]:
        r["speedup"] = r["steps_per_s"] / base
        print(f"    {r['name']:<20} {r['dtype']:<8} {r['steps_per_s']:8.2f} {r['img_per_s']:8.1f} "
              f"{r['speedup']:8.2f}x {r['warmup_s']:9.1f} {r['peak_gib']:9.2f} {r.get('ceiling_img_per_s', 0):12.1f}")
    # The recipe's defaults: compiled where train.compile resolves to on.
    r = res["step"][2] if resolve_compile(recipe, dev.type) else res["step"][1]
    report("train_cnn" + (" +compile" if "compile" in r["name"] else ""), r["img_per_s"], r["ceiling_img_per_s"],
           unit="img/s", extra=f" (forward+backward, batch {a.batch}); {r['speedup']:.2f}x the original's step")


# ----------------------------------------------------------------------------- (b) loader
def write_jpegs(folder, n, size, seed=0):
    """CT-like test JPEGs (smooth anatomy-ish blobs + noise, q95 4:4:4), so decode cost and
    file size resemble stage 1's output rather than pure noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    files = []
    for i in range(n):
        img = np.zeros((size, size, 3), np.float32)
        body = ((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.1) < 1
        img[body] = 120
        for _ in range(6):
            cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.3, 0.7), rng.uniform(0.03, 0.12)
            img[((xx - cx) ** 2 + (yy - cy) ** 2) < r * r] = rng.uniform(20, 250)
        img += rng.normal(0, 4, img.shape)
        img[..., 1] *= 0.8
        path = str(Path(folder) / f"{i:05d}.jpg")
        cv2.imwrite(path, np.clip(img, 0, 255).astype(np.uint8),
                    [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                     cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
        files.append(path)
    return files


class OriginalDataset(torch.utils.data.Dataset):
    """The original's per-item work: decode, RGB, augment, float32 CHW in the worker."""

    def __init__(self, files, size, transform):
        self.files, self.size, self.transform = files, size, transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        img = cv2.cvtColor(cv2.imread(self.files[i]), cv2.COLOR_BGR2RGB)
        img = self.transform(image=img)["image"]
        if img.shape[0] != self.size:
            img = cv2.resize(img, (self.size, self.size))
        return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), torch.tensor(0.0)


def _seed_only(worker_id):
    """Worker init without the one-thread cap (to measure what the cap buys)."""
    info = torch.utils.data.get_worker_info()
    info.dataset.transform.set_random_seed(info.seed % 2**32)


def bench_loader(name, ds, batch, workers, batches, init=None):
    kw = dict(persistent_workers=True, prefetch_factor=4) if workers else {}
    if init and workers:
        kw["worker_init_fn"] = init
    dl = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                     drop_last=True, **kw)
    it = iter(dl)
    t0 = time.perf_counter()
    for _ in range(min(2, len(dl) - 1)):  # workers up, caches warm
        next(it)
    t1 = time.perf_counter()
    n = 0
    while n < batches:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(dl)
            continue
        n += 1
    dt = time.perf_counter() - t1
    return dict(name=name, workers=workers, img_per_s=n * batch / dt, startup_s=t1 - t0,
                batch_mb=x.numel() * x.element_size() / 2**20)


def breakdown(files, size, aug_cfg, batch, reps):
    """Single-process ms per image for each piece of the loader."""
    cv2.setNumThreads(0)
    torch.set_num_threads(1)
    t = build_train_transform(aug_cfg, size)
    t.set_random_seed(0)
    out = {}

    def timed(key, fn, n, per=1):
        t0 = time.perf_counter()
        for i in range(n):
            fn(i)
        out[key] = (time.perf_counter() - t0) / n / per * 1e3

    n = min(reps, len(files))
    timed("imread (ms)", lambda i: cv2.imread(files[i]), n)
    img = load_slice(files[0], size)
    timed("imread+rgb(+resize) (ms)", lambda i: load_slice(files[i], size), n)
    timed("bgr->rgb (ms)", lambda i: cv2.cvtColor(img, cv2.COLOR_BGR2RGB), n)
    timed("augment (ms)", lambda i: t(image=img)["image"], n)
    for tr in t.transforms:
        tr_p = tr.p
        tr.p = 1.0
        timed(f"  {type(tr).__name__} p=1 (ms)", lambda i: tr(image=img)["image"], n)
        tr.p = tr_p
    items = [(torch.from_numpy(img), torch.tensor(0.0)) for _ in range(batch)]
    collate = torch.utils.data.default_collate
    timed("collate uint8 / img (ms)", lambda i: collate(items), max(1, n // 4), batch)
    fitems = [(torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), torch.tensor(0.0))
              for _ in range(batch)]
    timed("collate float32 / img (ms)", lambda i: collate(fitems), max(1, n // 4), batch)
    timed("to float32 CHW (ms)", lambda i: img.transpose(2, 0, 1).astype(np.float32), n)
    return out


# ----------------------------------------------------------------------------- main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", type=int, default=512, help="training image size")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=30, help="timed steps (after warm-up)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="also time ours with torch.compile (on by "
                   "default where the recipe's train.compile resolves to on: auto = on for CUDA)")
    p.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    p.add_argument("--images", type=int, default=1024, help="JPEGs to write for (b)")
    p.add_argument("--jpeg-size", type=int, default=512, help="size of those JPEGs")
    p.add_argument("--jpeg-dir", default="", help="use existing JPEGs (*.jpg, searched below)")
    p.add_argument("--loader-batches", type=int, default=0, help="timed batches (0: 2 passes)")
    p.add_argument("--skip-step", action="store_true")
    p.add_argument("--skip-loader", action="store_true")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    res = {"device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
           "torch": torch.__version__, "size": a.size, "batch": a.batch,
           "cpu_threads": torch.get_num_threads(), "cores": os.cpu_count()}
    print(f"# device {res['device']}, torch {res['torch']}, size {a.size}, batch {a.batch}, "
          f"{res['cores']} cores")

    if not a.skip_step:
        bench_steps(a, dev, res)

    if not a.skip_loader:
        aug = load_config(CONFIG_DIR / "train_cnn" / "_base.yml")["augment"]
        with tempfile.TemporaryDirectory() as tmp:
            if a.jpeg_dir:
                files = sorted(str(f) for f in Path(a.jpeg_dir).rglob("*.jpg"))[: a.images]
                src = cv2.imread(files[0]).shape[0]
            else:
                t0 = time.perf_counter()
                files = write_jpegs(tmp, a.images, a.jpeg_size)
                src = a.jpeg_size
                print(f"\n# wrote {len(files)} {src}px JPEGs in {time.perf_counter() - t0:.1f} s "
                      f"(mean {np.mean([os.path.getsize(f) for f in files]) / 1024:.0f} KiB)")
            tr = build_train_transform(aug, a.size)
            ours = SliceDataset(files, np.zeros(len(files)), a.size, tr)
            orig = OriginalDataset(files, a.size, build_train_transform(aug, src))
            nb = a.loader_batches or max(1, 2 * len(files) // a.batch)
            res["loader"] = [
                bench_loader("original", orig, a.batch, a.workers, nb),
                bench_loader("ours, default threads", ours, a.batch, a.workers, nb, _seed_only),
                bench_loader("ours", ours, a.batch, a.workers, nb, worker_init),
            ]
            print(f"\n(b) loader ({a.workers} workers, batch {a.batch}, {src}px JPEG -> {a.size}px)")
            print("    name                      img/s   start s  batch MiB")
            for r in res["loader"]:
                print(f"    {r['name']:<23} {r['img_per_s']:8.1f} {r['startup_s']:8.1f} {r['batch_mb']:9.1f}")
            res["breakdown"] = breakdown(files, a.size, aug, a.batch, reps=64)
            print("\n    one process, per image:")
            for k, v in res["breakdown"].items():
                print(f"      {k:<32} {v:7.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
