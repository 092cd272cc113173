"""Packed vs padded LSTM head: time of one forward + backward on a batch of random lengths.

The head packs its series so padding never reaches the LSTMs; this checks that packing costs
no more than running the LSTMs over the batch padded to its longest series (which would also
let the padding leak into the backward direction).

    python benchmarks/bench_rnn.py                       # CPU, small widths
    python benchmarks/bench_rnn.py --input-dim 2560 --device cuda
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from rsna_pe.rnn import RNNHead, rnn_loss, slice_mask  # noqa: E402


class PaddedHead(RNNHead):
    """The same head running its LSTMs over the padded batch (the slower, leaky baseline)."""

    def forward(self, emb, lengths):
        o1, _ = self.lstm1(emb)
        o2, _ = self.lstm2(o1)
        mask = slice_mask(lengths, emb.shape[1], device=emb.device)
        pooled = self._attend(self.attention1, o1, mask) + self._attend(self.attention2, o2, mask)
        return self.image_head(o1 + o2).squeeze(-1), self.exam_head(pooled)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_step(model, emb, lengths, img_y, exam_y, repeats, device):
    times = []
    for i in range(repeats + 1):  # the first run warms up
        model.zero_grad(set_to_none=True)
        sync(device)
        t = time.perf_counter()
        loss = rnn_loss(*model(emb, lengths), img_y, exam_y, lengths)
        loss.backward()
        sync(device)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--min-len", type=int, default=50)
    p.add_argument("--max-len", type=int, default=1083)
    p.add_argument("--input-dim", type=int, default=256, help="2560 in the recipe")
    p.add_argument("--hidden", type=int, default=32, help="128 in the recipe")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
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
    results = {}
    for name, cls in (("packed", RNNHead), ("padded", PaddedHead)):
        torch.manual_seed(0)
        model = cls(a.input_dim, a.hidden, a.layers, dropout=0.5).to(device).train()
        results[name] = time_step(model, emb, lengths, img_y, exam_y, a.repeats, device)
        print(f"{name}: {results[name]:.3f} s per forward+backward (median of {a.repeats})")
    print(f"packed / padded = {results['packed'] / results['padded']:.2f}")


if __name__ == "__main__":
    main()
