"""The GPU suite's helpers work on a CPU at tiny sizes (well under a minute): the ceilings of
benchmarks/ceiling.py and the profiler trace of benchmarks/profile_inference.py. The suite
itself: ``SMALL=1 bash benchmarks/gpu_suite.sh``."""
import json
import sys

import pytest
import torch

from rsna_pe.core.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import ceiling  # noqa: E402
import profile_inference  # noqa: E402

from _common import fake_pairs, fake_test_set  # noqa: E402

CPU = torch.device("cpu")


def test_ceilings_and_report_line(one_thread, capsys):
    model = ceiling.build_cnn(ceiling.MODEL)
    assert ceiling.forward_rate(CPU, 32, 2, steps=1, warmup=1, model=model) > 0
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    assert ceiling.train_rate(model.train(), x, torch.zeros(2), None, steps=1, warmup=1) > 0
    line = ceiling.report("dump", 50, 200, extra=" (plain forward)")
    assert line == "dump: 50 slices/s = 25% of ceiling 200 (plain forward)"
    assert line in capsys.readouterr().out


def test_profiler_trace_of_inference(one_thread, tmp_path):
    from rsna_pe.infer.ensemble import Ensemble

    studies, dirs, expected = fake_test_set(tmp_path / "data", 1, 3, 32)
    ens = Ensemble(fake_pairs(tmp_path / "output", 32, 1), CPU, chunk=2, amp=False)
    trace, table = profile_inference.profile_loop(ens, studies, dirs, expected, 0, tmp_path / "out", top=5)
    assert trace == tmp_path / "out" / "inference_trace.json"
    assert json.loads(trace.read_text())["traceEvents"]
    assert "Self CPU" in table and len(table.splitlines()) >= 5


@pytest.mark.parametrize("script", ["ceiling.py", "profile_inference.py"])
def test_scripts_have_help(script):
    import subprocess
    r = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / script), "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "usage" in r.stdout


def test_cpu_benchmark_times_the_cnn_alone_through_each_runtime(one_thread, tmp_path, monkeypatch):
    """benchmarks/bench_cpu_inference.py --cnn-alone at 32 px: every runtime ran in its own
    process, the ONNX ones without torch, and the table's ratios are to the channels_last path."""
    import bench_cpu_inference as bench

    # the benchmark sets torch's threads for its export; later in-process tests must keep one
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)

    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(sys, "argv", ["bench_cpu_inference.py", "--cnn-alone", "--size", "32", "--studies", "1",
                                      "--slices", "2", "--repeats", "1", "--iters", "1", "--work",
                                      str(tmp_path / "work"), "--name", "cnn"])
    bench.main()
    result = json.loads((tmp_path / "results" / "cnn.json").read_text())
    assert [r["label"] for r in result["runs"]] == list(bench.CNN_ALONE)
    assert all(r["torch_imported"] == r["label"].startswith("torch") for r in result["runs"])
    assert result["summary"]["torch"]["x_torch"] == 1.0 and result["summary"]["torch-nchw"]["x_torch_nchw"] == 1.0
    assert all(m["slices_per_s"] > 0 for m in result["summary"].values())
    assert "x torch (channels_last)" in (tmp_path / "results" / "cnn.txt").read_text()


def test_int8_calibration_draws_read_training_slices_as_the_cnn_sees_them(tmp_path):
    """The int8 calibration draws of bench_cpu_inference.py: per series the asked number of
    slices of the CNN's JPEG set, at its input size, the same for the same seed."""
    import cv2
    import numpy as np

    import bench_cpu_inference as bench

    rng = np.random.default_rng(0)
    for study in range(3):
        folder = tmp_path / "data" / "train-jpegs-16" / f"1.{study}" / f"2.{study}"
        folder.mkdir(parents=True)
        for z in range(5):
            cv2.imwrite(str(folder / f"{z:04d}_3.{study}.{z}.jpg"), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    from rsna_pe.data.images import conversion_params  # the JPEG set's record, as stage 1 writes it

    entry = {"config": {"dataset": {"size": 8}},
             "record": {"params": {"input_params": {"jpegs": conversion_params(16, 95)}}}}
    a = bench.training_slices(tmp_path / "data", seed=1, series=2, per_series=3)(entry)
    b = bench.training_slices(tmp_path / "data", seed=1, series=2, per_series=3)(entry)
    c = bench.training_slices(tmp_path / "data", seed=2, series=3, per_series=5)(entry)
    assert a.shape == (6, 3, 8, 8) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert c.shape == (15, 3, 8, 8)
