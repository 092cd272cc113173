"""Stage 7 on a CPU: torch (channels_last fp32, today's CPU path) against ONNX Runtime, end to end.

    python benchmarks/bench_cpu_inference.py                 # 3 studies x 40 slices at 512 px, 2 threads
    python benchmarks/bench_cpu_inference.py --int8 all,conv # also ONNX Runtime with int8 CNNs
    python benchmarks/bench_cpu_inference.py --demo /tmp/demo_ref --bundle /tmp/onnx_bundle \\
        --work /tmp/demo_onnx --int8 all,conv                # the demo's test score through each runtime

Speed: synthetic test studies (rsna_pe.synthetic, uncompressed 512 x 512) and a bundle of
``--pairs`` rexnet_200 CNN + LSTM pairs with randomly initialised weights at 512 px input
(speed does not depend on the weights), exported with its ONNX models (src/export_models.py's
path). Each run is ``src/inference.py`` in a fresh subprocess (``num_workers=0``: decoding in
the same process, so that the CNNs' share of the time is clean), timed from its first import;
the runtimes alternate, repeat after repeat, so load from other processes hits both alike.
Reported per run: the whole command's seconds, the prediction loop's slices/s, the seconds
inside the CNNs, peak RSS, whether torch was imported. ``--int8 all,conv`` adds bundles with
each CNN quantised to int8 by ONNX Runtime (static, QDQ, int8 weights per channel, calibrated
on a CT-like synthetic series, rsna_pe.infer.onnx_export.ct_like_input): every operator ONNX
Runtime quantises (``all``), or the convolutions only (``conv``); the pipeline offers neither
(their effect on the demo's score: ``--demo ... --calibration-draws``).
``--cnn-alone``: the CNN alone (no reading, no heads), torch NCHW, channels_last and bf16,
ONNX Runtime fp32 and int8, each run a fresh process, as stage 7 calls it.

Demo (``--demo WORKSPACE``): stage 7 of the demo's test set from ``--bundle`` with each
runtime, run in ``--work`` (the workspace's data copied there; nothing is written into the
workspace), each submission scored with src/evaluate.py, the largest difference between the
runtimes' probabilities. Raw results: benchmarks/results/cpu_inference*.txt and .json.
"""
import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(SRC))


# ----------------------------------------------------------------------------- one run (subprocess)
def _timed(owner, name, box):
    """Wrap ``owner.name`` so that its seconds (and the slices it saw) add up in ``box``."""
    fn = getattr(owner, name)

    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            box["s"] += time.perf_counter() - t
            box["n"] += len(a[1]) if name == "embed" else 0
    setattr(owner, name, wrapper)


def child(args):
    """One stage 7 run as the pipeline runs it, with the CNNs and the prediction loop timed."""
    t0 = time.perf_counter()
    import inference

    from rsna_pe.infer.ensemble import SeriesReader

    if args.child == "torch":
        from rsna_pe.infer.embed import Embedder as Embedding
    else:
        from rsna_pe.infer.onnx_runtime import OnnxEmbedder as Embedding
    cnn, loop, read = {"s": 0.0, "n": 0}, {"s": 0.0, "n": 0}, {"s": 0.0, "n": 0}
    _timed(Embedding, "embed", cnn)
    _timed(inference, "predict_all", loop)
    _timed(SeriesReader, "read_with", read)
    inference.main(["-c", args.config, f"data_dir={args.data}", f"bundle={args.bundle}", f"runtime={args.child}",
                    f"onnx_threads={args.threads}", "num_workers=0", f"output_dir={args.out}", "overwrite=true",
                    *([f"batch_size={args.batch}"] if args.batch else [])])
    print(json.dumps({"runtime": args.child, "seconds": time.perf_counter() - t0, "loop_s": loop["s"],
                      "cnn_s": cnn["s"], "cnn_slices": cnn["n"], "read_s": read["s"],
                      "peak_rss_mb": peak_rss_mb(),
                      "torch_imported": "torch" in sys.modules}))


def peak_rss_mb():
    """This process's peak resident memory: VmHWM, which starts afresh at exec (getrusage's
    ru_maxrss keeps the parent's peak from before it, when that was larger)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(runtime, label, bundle, data, out, args, config):
    """One child run of ``runtime`` on ``bundle``; -> its numbers."""
    # OMP_NUM_THREADS: torch's threads on a CPU (inference.py honours it), ONNX Runtime gets onnx_threads
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), WANDB_MODE="disabled", PYTHONPATH=str(SRC))
    cmd = [sys.executable, __file__, "--child", runtime, "--config", str(config), "--data", str(data),
           "--bundle", str(bundle), "--out", str(out), "--threads", str(args.threads),
           *(["--batch", str(args.batch)] if args.batch else [])]
    shutil.rmtree(out, ignore_errors=True)  # else the rerun rule finds the last run's submission up to date
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=args.cwd or None)
    if run.returncode:
        raise SystemExit(f"{label} run failed:\n{run.stderr[-3000:]}")
    result = json.loads(run.stdout.strip().splitlines()[-1])
    slices = len(open(Path(out) / "submission.csv").read().splitlines()) - 1
    return {**result, "label": label, "rows": slices}


# ----------------------------------------------------------------------------- int8
INT8_OPS = {"all": None, "conv": ["Conv"]}  # operators to quantise (None: all ONNX Runtime can)


def int8_cnn(data, images, ops=None):
    """-> a CNN's ONNX model ``data`` with the operators ``ops`` (None: every one ONNX Runtime
    can) quantised to int8 by ONNX Runtime (static, QDQ, int8 weights per channel, uint8
    activations), calibrated on ``images`` uint8 (N, 3, H, W)."""
    import contextlib
    import io
    import warnings

    import numpy as np
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from rsna_pe.infer.onnx_runtime import CNN_INPUTS

    batches = iter([{CNN_INPUTS[0]: np.ascontiguousarray(images[i:i + 2])} for i in range(0, len(images), 2)])
    reader = type("Calibration", (CalibrationDataReader,), {"get_next": lambda self: next(batches, None)})()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        fp32, pre, out = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(data)
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=None if ops is None else list(ops))
        return out.read_bytes()


def int8_bundle(src, dst, ops="all", calibration=None):
    """A copy of the bundle ``src`` in ``dst`` with each CNN's ONNX model quantised to int8
    (``int8_cnn``), the operators of ``INT8_OPS[ops]``, calibrated on the CT-like series the
    export checks with (rsna_pe.infer.onnx_export.ct_like_input: 6 slices of a synthetic
    positive study) or on ``calibration(entry)`` (uint8 (N, 3, H, W)); the manifest's hashes
    updated. The pipeline itself writes no int8 models (docs/speed.md says why)."""
    from rsna_pe.infer.bundle_files import sha256_hex
    from rsna_pe.infer.onnx_export import ct_like_input

    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    manifest = json.loads((dst / "manifest.json").read_text())
    for name in {p["cnn"] for p in manifest["pairs"]}:
        entry = json.loads((dst / f"{name}.json").read_text())
        onnx_file = dst / manifest["onnx"]["models"][name]["file"]
        images = calibration(entry) if calibration else ct_like_input(entry, dst / f"{name}.json")
        onnx_file.write_bytes(int8_cnn(onnx_file.read_bytes(), images, ops=INT8_OPS[ops]))
        manifest["files"][onnx_file.name] = sha256_hex(onnx_file.read_bytes())
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def training_slices(data_dir, seed, series=16, per_series=4):
    """``calibration`` for int8_bundle: ``per_series`` slices of each of ``series`` training
    series drawn with ``seed`` from the stage-1 JPEG set a CNN was trained on (under
    ``data_dir``), as the CNN sees them."""
    import random

    import numpy as np

    from rsna_pe.core import paths
    from rsna_pe.data.images import read_jpeg
    from rsna_pe.data.model_input import input_kind, model_input
    from rsna_pe.infer.pairs import jpeg_settings

    def draw(entry):
        jpeg_size, _, margin = jpeg_settings(entry, "calibration")
        root = paths.jpeg_dir(data_dir, jpeg_size, crop="lung" if margin is not None else "none")
        rng = random.Random(seed)
        chosen = sorted(p for p in root.glob("*/*") if p.is_dir())
        rng.shuffle(chosen)
        out = []
        for folder in chosen[:series]:
            stack = np.stack([read_jpeg(f).transpose(2, 0, 1) for f in sorted(folder.glob("*.jpg"))])
            stack = model_input(stack, input_kind(entry["config"]), int(entry["config"]["dataset"]["size"]))
            out.append(stack[sorted(rng.sample(range(len(stack)), min(per_series, len(stack))))])
        return np.concatenate(out)
    return draw


# ----------------------------------------------------------------------------- speed
def speed_setup(args, work):
    """Test studies, a bundle of random-weight pairs with its ONNX models (and its int8 copy)."""
    import torch

    from _common import fake_pairs, fake_test_set
    from rsna_pe.infer import bundle

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    studies, _, expected = fake_test_set(work / "data", args.studies, args.slices, args.size)
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    manifest = bundle.export(fake_pairs(work / "output", args.size, args.pairs), work / "bundle", overwrite=True)
    t_export = time.perf_counter() - t
    bundles = {"torch": work / "bundle", "onnx": work / "bundle",
               **{f"onnx-int8-{v}": int8_bundle(work / "bundle", work / f"bundle_int8_{v}", v) for v in args.int8}}
    setup = {"studies": len(studies), "slices": sum(map(len, expected.values())), "size": args.size,
             "pairs": args.pairs, "threads": args.threads, "data_seconds": t_data, "export_seconds": t_export,
             "onnx_max_abs_diff": max(m["max_abs_diff"] for m in manifest["onnx"]["models"].values())}
    return setup, bundles


def summary(runs, setup):
    """Per runtime: medians over the repeats; ratios to torch."""
    out = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        med = {k: statistics.median(r.get(k, 0.0) for r in mine)
               for k in ("seconds", "loop_s", "cnn_s", "read_s", "peak_rss_mb")}
        out[label] = {**med, "loop_slices_per_s": setup["slices"] / med["loop_s"],
                      "end_to_end_slices_per_s": setup["slices"] / med["seconds"],
                      "outside_cnn_share": 1 - med["cnn_s"] / med["loop_s"],
                      # the loop's seconds by stage: reading (DICOM decode, windows, JPEG codec,
                      # resize), the CNNs, the rest (heads, ensembling, rules); before and after
                      # the loop: imports, model loading, writing
                      "stages_s": {"read": med["read_s"], "cnn": med["cnn_s"],
                                   "heads_and_rest": statistics.median(r["loop_s"] - r.get("read_s", 0.0) - r["cnn_s"]
                                                                       for r in mine),
                                   "outside_loop": statistics.median(r["seconds"] - r["loop_s"] for r in mine)},
                      "torch_imported": any(r["torch_imported"] for r in mine)}
    for label, s in out.items():
        s["loop_speedup"] = s["loop_slices_per_s"] / out["torch"]["loop_slices_per_s"]
        s["end_to_end_speedup"] = s["end_to_end_slices_per_s"] / out["torch"]["end_to_end_slices_per_s"]
    return out


def speed(args):
    t0 = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_cpu_inference_"))
    work.mkdir(parents=True, exist_ok=True)
    setup, bundles = speed_setup(args, work)
    print(f"{setup['slices']} slices in {setup['studies']} studies at {args.size} px, {args.pairs} pair(s), "
          f"{args.threads} threads; data {setup['data_seconds']:.0f} s, export {setup['export_seconds']:.0f} s")
    runs, labels = [], list(bundles)
    for r in range(args.repeats):
        for label in (labels if r % 2 == 0 else labels[::-1]):  # alternate who goes first
            runtime = "torch" if label == "torch" else "onnx"
            runs.append({**run_once(runtime, label, bundles[label], work / "data", work / f"out_{label}", args,
                                    ROOT / "configs" / "inference.yml"), "repeat": r})
            print(json.dumps(runs[-1]))
    result = {"setup": setup, "runs": runs, "summary": summary(runs, setup), "machine": machine(),
              "seconds": time.perf_counter() - t0}
    write(result, args.name, speed_lines(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def speed_lines(result):
    s, lines = result["setup"], []
    lines.append(f"stage 7 end to end, {s['slices']} slices ({s['studies']} synthetic studies) at {s['size']} px, "
                 f"{s['pairs']} random-weight rexnet_200 + LSTM pair(s), {s['threads']} threads, num_workers=0; "
                 f"medians of {len(result['runs']) // len(result['summary'])} alternating runs")
    lines.append(f"machine: {result['machine']}")
    lines.append("runtime          loop slices/s  x torch  command s  x torch  outside CNNs  peak RSS MB  torch imported")
    for label, m in result["summary"].items():
        lines.append(f"{label:<16} {m['loop_slices_per_s']:13.2f}  {m['loop_speedup']:7.2f}  {m['seconds']:9.1f}  "
                     f"{m['end_to_end_speedup']:7.2f}  {m['outside_cnn_share']:12.1%}  {m['peak_rss_mb']:11.0f}"
                     f"  {m['torch_imported']}")
    lines.append("seconds by stage (medians): runtime, read (DICOM decode, windows, codec, resize), CNNs, "
                 "heads and the rest of the loop, outside the loop (imports, loading models, writing)")
    for label, m in result["summary"].items():
        if "stages_s" in m:
            lines.append(f"  {label:<16} " + "  ".join(f"{k} {v:6.2f}" for k, v in m["stages_s"].items()))
    lines.append(f"data {s['data_seconds']:.0f} s, export {s['export_seconds']:.0f} s, whole benchmark "
                 f"{result['seconds'] / 60:.1f} min; largest ONNX difference to torch at export {s['onnx_max_abs_diff']:.2g}")
    return lines


# ----------------------------------------------------------------------------- the CNN alone
CNN_ALONE = ("torch-nchw", "torch", "torch-bf16", "onnx")  # then onnx-int8-<ops> per --int8


def cnn_child(args):
    """One CNN alone, as stage 7 runs it on a CPU: ``--iters`` batches of ``--batch`` random
    uint8 slices after one warm-up batch; prints the median batch's slices/s."""
    import numpy as np

    x = np.random.default_rng(0).integers(0, 256, (args.batch, 3, args.size, args.size), dtype=np.uint8)
    if args.cnn_child.startswith("onnx"):
        from rsna_pe.infer.onnx_runtime import CNN_INPUTS, session_of

        session = session_of(Path(args.model).read_bytes(), args.model, "cnn", args.threads)
        run = lambda: session.run(None, {CNN_INPUTS[0]: x})[0]  # noqa: E731 - OnnxEmbedder's call
    else:
        import torch

        from rsna_pe.infer.embed import Embedder
        from rsna_pe.train.checkpoint import load_trained

        torch.set_num_threads(args.threads)
        model, _ = load_trained(args.model)
        emb = Embedder(model, torch.device("cpu"), chunk=args.batch, amp=False,
                       channels_last=args.cnn_child != "torch-nchw")
        bf16 = args.cnn_child == "torch-bf16"
        run = lambda: emb.run(x) if not bf16 else _bf16(emb, x)  # noqa: E731
    run()
    seconds = []
    for _ in range(args.iters):
        t = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - t)
    print(json.dumps({"label": args.cnn_child, "slices_per_s": args.batch / statistics.median(seconds),
                      "seconds": seconds, "torch_imported": "torch" in sys.modules}))


def _bf16(emb, x):
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16):
        return emb.run(x)


def cnn_alone(args):
    """The CNN alone (no reading, no heads) through each runtime, fresh processes taking turns:
    how much of the end-to-end ratio the CNN itself sets."""
    from rsna_pe.core import paths

    t0 = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_cpu_cnn_"))
    work.mkdir(parents=True, exist_ok=True)
    setup, bundles = speed_setup(args, work)
    ckpt = paths.run_dir(work / "output" / "train_cnn", "rexnet200_bce", 0) / "best.ckpt"
    manifest = json.loads((work / "bundle" / "manifest.json").read_text())
    cnn_file = manifest["onnx"]["models"][manifest["pairs"][0]["cnn"]]["file"]
    models = {**{label: ckpt for label in CNN_ALONE if label.startswith("torch")}, "onnx": work / "bundle" / cnn_file,
              **{label: bundles[label] / cnn_file for label in bundles if label.startswith("onnx-int8")}}
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(SRC))
    runs, labels = [], list(models)
    for r in range(args.repeats):
        for label in (labels if r % 2 == 0 else labels[::-1]):
            cmd = [sys.executable, __file__, "--cnn-child", label, "--model", str(models[label]), "--size",
                   str(args.size), "--batch", str(args.batch or 8), "--threads", str(args.threads),
                   "--iters", str(args.iters)]
            run = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{label} run failed:\n{run.stderr[-3000:]}")
            runs.append({**json.loads(run.stdout.strip().splitlines()[-1]), "repeat": r})
            print(json.dumps(runs[-1]))
    summary = {label: {"slices_per_s": statistics.median(r["slices_per_s"] for r in runs if r["label"] == label)}
               for label in labels}
    for m in summary.values():
        m["x_torch"] = m["slices_per_s"] / summary["torch"]["slices_per_s"]
        m["x_torch_nchw"] = m["slices_per_s"] / summary["torch-nchw"]["slices_per_s"]
    result = {"setup": {**setup, "batch": args.batch or 8, "iters": args.iters}, "runs": runs, "summary": summary,
              "machine": machine(), "seconds": time.perf_counter() - t0}
    write(result, args.name, cnn_alone_lines(result))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def cnn_alone_lines(result):
    s = result["setup"]
    repeats = len(result["runs"]) // len(result["summary"])
    lines = [f"the CNN alone: one random-weight rexnet_200 at {s['size']} px, batches of {s['batch']} random uint8 "
             f"slices, {s['threads']} threads; per run the median of {s['iters']} batches after one warm-up, each "
             f"run a fresh process, runtimes taking turns; medians of {repeats} runs",
             f"machine: {result['machine']}",
             "runtime            slices/s  x torch (channels_last)  x torch NCHW"]
    for label, m in result["summary"].items():
        lines.append(f"{label:<18} {m['slices_per_s']:8.2f}  {m['x_torch']:23.2f}  {m['x_torch_nchw']:11.2f}")
    lines.append(f"whole benchmark {result['seconds'] / 60:.1f} min")
    return lines


# ----------------------------------------------------------------------------- demo
def score(ws, submission):
    """src/evaluate.py's numbers for ``submission`` on the demo's test labels."""
    out = Path(submission).with_suffix(".score.json")
    subprocess.run([sys.executable, str(SRC / "evaluate.py"), "--labels", "data/test_labels.csv", str(submission),
                    "--prior", "data/train.csv", "--json", str(out)], cwd=ws, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(SRC)))
    return json.loads(out.read_text())["files"][0]["score"]


def demo(args):
    import pandas as pd

    ws = Path(args.work)
    if not (ws / "data").is_dir():
        shutil.copytree(Path(args.demo) / "data", ws / "data")
    args.cwd = str(ws)
    bundles = {"torch": Path(args.bundle), "onnx": Path(args.bundle),
               **{f"onnx-int8-{v}": int8_bundle(Path(args.bundle), ws / f"bundle_int8_{v}", v) for v in args.int8}}
    for v in args.int8:  # the same quantisation calibrated on training slices of the demo, draw by draw
        for d in range(args.calibration_draws):
            bundles[f"onnx-int8-{v}-draw{d}"] = int8_bundle(Path(args.bundle), ws / f"bundle_int8_{v}_draw{d}", v,
                                                            training_slices(Path(args.demo) / "data", d))
    runs, subs = {}, {}
    for label, b in bundles.items():
        out = ws / f"out_{label}"
        runs[label] = run_once("torch" if label == "torch" else "onnx", label, b, ws / "data", out, args,
                               ROOT / "configs" / "demo" / "inference.yml")
        runs[label]["score"] = score(ws, out / "submission.csv")
        subs[label] = pd.read_csv(out / "submission.csv", dtype={"id": str}).set_index("id")["label"].sort_index()
    for label, run in runs.items():
        run["max_abs_diff_to_torch"] = float((subs[label] - subs["torch"]).abs().max())
        run["score_change_vs_torch"] = run["score"] / runs["torch"]["score"] - 1
    result = {"workspace": str(args.demo), "bundle": str(args.bundle), "runs": runs, "machine": machine()}
    write(result, args.name, demo_lines(result))


def demo_lines(result):
    lines = [f"demo test set (src/evaluate.py --labels data/test_labels.csv SUBMISSION --prior data/train.csv), "
             f"stage 7 from {result['bundle']} (exported from {result['workspace']}), configs/demo/inference.yml",
             f"machine: {result['machine']}",
             "runtime                score     change vs torch  largest |p - p_torch|  stage 7 s  torch imported"]
    for label, r in result["runs"].items():
        lines.append(f"{label:<22} {r['score']:.6f}  {r['score_change_vs_torch']:+15.4%}  {r['max_abs_diff_to_torch']:20.3g}"
                     f"  {r['seconds']:9.1f}  {r['torch_imported']}")
    return lines


# ----------------------------------------------------------------------------- output
def machine():
    import platform
    from importlib import metadata

    versions = {k: metadata.version(k) for k in ("torch", "onnxruntime")}
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, " + \
        ", ".join(f"{k} {v}" for k, v in versions.items())


def write(result, name, lines):
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{name}.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / name}.txt and .json")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--studies", type=int, default=3)
    p.add_argument("--slices", type=int, default=40)
    p.add_argument("--size", type=int, default=512, help="DICOM matrix, JPEG and CNN input size")
    p.add_argument("--pairs", type=int, default=1, help="CNN + LSTM pairs in the bundle (the recipe has six)")
    p.add_argument("--threads", type=int, default=2, help="torch's and ONNX Runtime's threads")
    p.add_argument("--batch", type=int, default=0, help="slices per CNN run (0: the config's batch_size)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--int8", type=lambda v: [x for x in v.split(",") if x], default=[], metavar="all,conv",
                   help="also ONNX Runtime with int8 CNNs: every operator quantised (all), convolutions only (conv)")
    p.add_argument("--work", help="working folder (kept; default: a temporary one, removed)")
    p.add_argument("--demo", help="a trained demo workspace: score its test set through each runtime")
    p.add_argument("--bundle", help="--demo: the bundle exported from it (with its ONNX models)")
    p.add_argument("--calibration-draws", type=int, default=0, metavar="K",
                   help="--demo --int8: also each int8 variant calibrated on K draws of 64 training slices "
                        "(16 series x 4) of the demo's JPEG set instead of the CT-like series")
    p.add_argument("--cnn-alone", action="store_true",
                   help="time the CNN alone (no reading, no heads) through each runtime instead of stage 7")
    p.add_argument("--iters", type=int, default=5, help="--cnn-alone: timed batches per run")
    p.add_argument("--name", help="results file name (default cpu_inference, cpu_inference_cnn_alone or "
                                  "cpu_inference_demo_parity)")
    for hidden in ("--child", "--cnn-child", "--model", "--config", "--data", "--out", "--cwd"):
        p.add_argument(hidden, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    if args.cnn_child:
        return cnn_child(args)
    if set(args.int8) - set(INT8_OPS):
        p.error(f"--int8: choose from {', '.join(INT8_OPS)}")
    args.name = args.name or ("cpu_inference_demo_parity" if args.demo else
                              "cpu_inference_cnn_alone" if args.cnn_alone else "cpu_inference")
    if args.demo:
        if not (args.bundle and args.work):
            p.error("--demo needs --bundle and --work")
        return demo(args)
    return cnn_alone(args) if args.cnn_alone else speed(args)


if __name__ == "__main__":
    main()
