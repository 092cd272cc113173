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
