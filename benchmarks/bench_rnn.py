"""LSTM head: time of one forward + backward on a batch of series of random lengths.

Compares the head's two padding-proof ways of running its LSTMs (``packed``: packed
sequences; ``layered``: layer by layer, backward direction reversed within each length) with
``padded``, the plain LSTMs over the batch padded to its longest series (which lets padding
leak into the backward direction, so it is only a speed reference).

    python benchmarks/bench_rnn.py                       # CPU, small widths
    python benchmarks/bench_rnn.py --input-dim 2560 --hidden 128 --device cuda
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from _common import sync  # noqa: E402
from rsna_pe.models.head import RNNHead
from rsna_pe.models.losses import head_bce_loss


class PaddedHead(RNNHead):
    """The same head running its LSTMs straight over the padded batch (leaky reference)."""

    def _run_lstms(self, emb, lengths, mask):
        o1, _ = self.lstm1(emb)
        o2, _ = self.lstm2(o1)
        return o1, o2



def time_step(model, emb, lengths, img_y, exam_y, device):
    model.zero_grad(set_to_none=True)
    sync(device)
    t = time.perf_counter()
    head_bce_loss(*model(emb, lengths), img_y, exam_y, lengths).backward()
    sync(device)
    return time.perf_counter() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--min-len", type=int, default=50)
    p.add_argument("--max-len", type=int, default=1083)
    p.add_argument("--input-dim", type=int, default=256, help="2560 in the recipe")
    p.add_argument("--hidden", type=int, default=32, help="128 in the recipe")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--impls", default="layered,packed,padded", help="comma-separated subset")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(a.min_len, a.max_len + 1, (a.batch,), generator=g)
    steps = int(lengths.max())
    emb = torch.randn(a.batch, steps, a.input_dim, generator=g).to(device)
    img_y = (torch.rand(a.batch, steps, generator=g) > 0.5).float().to(device)
    exam_y = (torch.rand(a.batch, 9, generator=g) > 0.5).float().to(device)
    print(f"batch {a.batch}, lengths {a.min_len}-{a.max_len} (sum {int(lengths.sum())}, padded "
          f"{a.batch * steps}), input {a.input_dim}, hidden {a.hidden}, {a.layers} layers, {device}, "
          f"{torch.get_num_threads()} threads")
    models = {}
    for name in a.impls.split(","):
        torch.manual_seed(0)
        cls, impl = (PaddedHead, "auto") if name == "padded" else (RNNHead, name)
        models[name] = cls(a.input_dim, a.hidden, a.layers, dropout=0.5, impl=impl).to(device).train()
    times = {name: [] for name in models}
    for r in range(a.warmup + a.repeats):  # interleaved rounds: load changes hit all alike
        for name, model in models.items():
            dt = time_step(model, emb, lengths, img_y, exam_y, device)
            if r >= a.warmup:
                times[name].append(dt)
    # The fastest round is the least disturbed by other work on the machine.
    results = {name: min(t) for name, t in times.items()}
    for name, t in times.items():
        print(f"{name}: {min(t):.3f} s per forward+backward (best of {a.repeats}; "
              f"median {statistics.median(t):.3f} s)")
    if "padded" in results:
        print(" ".join(f"{k}/padded = {v / results['padded']:.2f}"
                       for k, v in results.items() if k != "padded"))


if __name__ == "__main__":
    main()
