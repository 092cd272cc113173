"""One PyTorch-profiler trace of stage 7's loop: where the time of a few studies goes.

    python benchmarks/profile_inference.py --out bench_out        # GPU: 512 px, 3 studies x 200 slices
    python benchmarks/profile_inference.py --device cpu --size 64 --studies 2 --slices 8 --pairs 1 --out /tmp/p

Random pairs and synthetic DICOM as in bench_inference.py; one warm-up study, then
inference.py's ``predict_all`` over the others under torch.profiler (CUDA activities when there
is a GPU). Writes ``<out>/inference_trace.json`` (open in chrome://tracing or
https://ui.perfetto.dev) and prints the 15 kernels with the most self CUDA time (CPU ops by
self CPU time on a CPU).
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from _common import fake_pairs, fake_test_set, sync
from inference import predict_all  # noqa: E402
from rsna_pe.core.runtime import pick_device
from rsna_pe.infer.ensemble import Ensemble


def profile_loop(ens, studies, dirs, expected, workers, out_dir, top=15):
    """``predict_all`` over ``studies`` under the profiler -> (trace path, table of the ``top``
    kernels by self device time, or ops by self CPU time without a GPU)."""
    cuda = ens.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        predict_all(ens, studies, dirs, expected, workers)
        sync(ens.device)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trace = out_dir / "inference_trace.json"
    prof.export_chrome_trace(str(trace))
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    return trace, prof.key_averages().table(sort_by=key, row_limit=top)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--size", type=int, default=512, help="CNN input and DICOM matrix size")
    p.add_argument("--studies", type=int, default=3, help="studies profiled (after one warm-up study)")
    p.add_argument("--slices", type=int, default=200)
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--chunk", type=int, default=128, help="slices per CNN forward")
    p.add_argument("--workers", type=int, default=4, help="DataLoader workers reading ahead")
    p.add_argument("--out", default="bench_out", help="folder for inference_trace.json")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    tmp = Path(tempfile.mkdtemp(prefix="profile_inference_"))
    try:
        studies, dirs, expected = fake_test_set(tmp / "data", a.studies + 1, a.slices, a.size)
        ens = Ensemble(fake_pairs(tmp / "output", a.size, a.pairs), device, chunk=a.chunk)
        predict_all(ens, studies[:1], dirs, expected, 0)  # warm-up: cudnn plans, allocator
        trace, table = profile_loop(ens, studies[1:], dirs, expected, a.workers, a.out)
        print(f"profile of {len(studies) - 1} studies x {a.slices} slices, {len(ens.members)} pairs, "
              f"{a.size} px on {device}: trace {trace}")
        print(table)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
