"""Stage 5: per-slice CNN embeddings of every series, for the LSTM heads.

    python src/dump_embeddings.py -c configs/dump_embeddings/rexnet200_bce.yml dataset.fold=0

Finds ``best.ckpt`` of ``output/train_cnn/<run>/fold_<k>`` (or ``ckpt_path``), rebuilds the model
from the checkpoint's own config and writes ``dump/v1/<run>/fold_<k>/<study>/<series>.npz``
(``embeddings`` float32 (S, 2560): the CNN's ``embedding``, 2560 + 1 + K wide with
``model.exam_targets.in_embedding``; ``labels``, ``sop``) and ``record.json`` (the checkpoint's
content hash, the input size and kind, the label order of ``labels``, the npz set's record).
The input is built as the checkpoint's config says (rsna_pe.data.model_input). A rerun with
the same record skips finished series; after the checkpoint or the npz set changed it stops
until ``overwrite=true`` redoes the dump. Under torchrun each rank takes its share of the series.
A study or series id of the fold csv that is not a safe file name (rsna_pe.core.ids) stops it in
one line naming the series, before anything is read or written.
"""
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from rsna_pe.core import cli, paths, runtime
from rsna_pe.core.config import save_config
from rsna_pe.core.errors import InputFileError, PipelineError
from rsna_pe.core.io import atomic_savez, has_outputs, read_csv
from rsna_pe.data.images import read_npz_images
from rsna_pe.data.model_input import input_kind, model_input
from rsna_pe.infer.embed import Embedder
from rsna_pe.infer.inference_records import dump_record
from rsna_pe.records import provenance
from rsna_pe.train.checkpoint import find_checkpoint, load_trained

log = logging.getLogger("dump_embeddings")


class _SeriesNpz(torch.utils.data.Dataset):
    """Loads one series per item as the model's input (its kind, resized if needed) in
    DataLoader workers, so reading and decoding overlap with the model's work on the previous
    series."""

    def __init__(self, items, size, kind):
        self.items, self.size, self.kind = items, size, kind

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        src, dst = self.items[i]
        try:
            with np.load(src) as z:
                imgs = model_input(read_npz_images(z, src), self.kind, self.size)
                return dst, imgs, z["labels"], z["sop"], None
        except Exception as e:  # reported by the main process, which names the file
            return dst, None, None, None, f"{src}: {type(e).__name__}: {e}"


def main(argv=None):
    cfg, _ = cli.parse(__doc__.splitlines()[0], argv=argv)
    run, fold = cfg["cnn_run"] or cfg["run_name"], cfg["dataset"]["fold"]
    ckpt = Path(cfg["ckpt_path"]) if cfg["ckpt_path"] else find_checkpoint(cfg["cnn_output"], run, fold)
    if not ckpt.is_file():
        raise PipelineError(f"{ckpt}: checkpoint not found")
    d = runtime.init(cfg["device"])
    try:
        _dump(cfg, run, fold, ckpt, d)
    finally:
        runtime.cleanup()


def _guard(cfg, ckpt_path, ckpt, src_root, out):
    """The rerun rule (rank 0): a dump made from another checkpoint or npz set stops."""
    record = dump_record(ckpt_path, ckpt, src_root, out)
    keep = provenance.guard(out, record, has_outputs(out), cfg["overwrite"], "embedding dump")
    if not keep or not (out / "config.yaml").is_file():
        save_config({**cfg, "checkpoint": str(ckpt_path)}, out / "config.yaml")


def _dump(cfg, run, fold, ckpt, d):
    rank, world, device = d.rank, d.world, d.device
    if device.type == "cpu":
        runtime.set_cpu_threads(cfg["num_workers"], world)
    model, saved = load_trained(ckpt, device="cpu")
    size, kind = saved["config"]["dataset"]["size"], input_kind(saved["config"])

    data = Path(cfg["data_dir"])
    key = ["StudyInstanceUID", "SeriesInstanceUID"]  # joined to paths by paths.series_file only (ids checked)
    df = read_csv(paths.fold_csv(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"]), key, id_columns=key, dtype=str)
    src_root, out = paths.npz_dir(data, cfg["jpeg_size"], crop=cfg["jpeg_crop"]), paths.dump_dir(cfg["dump_root"], run, fold)
    keys = sorted(set(map(tuple, df[key].values)))
    missing = [paths.series_file(src_root, *k) for k in keys if not paths.series_file(src_root, *k).is_file()]
    if missing:
        raise InputFileError(missing[0], f"npz not found ({len(missing)} missing; run make_npz.py)")
    runtime.on_main(d, lambda: _guard(cfg, ckpt, saved, src_root, out))
    todo = [k for k in keys[rank::world] if not paths.series_file(out, *k).is_file()]
    n_slices = int(df.groupby(["StudyInstanceUID", "SeriesInstanceUID"]).size().reindex(todo).sum())
    compile_ = runtime.resolve_compile(cfg["compile"], device.type, n_slices, cfg["compile_min_slices"])
    log.info("rank %d: %d series (%d slices) to embed with %s (input %d px, %s) on %s%s -> %s",
             rank, len(todo), n_slices, ckpt, size, kind, device, ", compiled" if compile_ else "", out)
    embedder = Embedder(model, device, chunk=cfg["batch_size"], amp=cfg["amp"],
                   channels_last=cfg["channels_last"], compile=compile_)
    items = [(paths.series_file(src_root, *k), paths.series_file(out, *k)) for k in todo]
    loader = torch.utils.data.DataLoader(_SeriesNpz(items, size, kind), batch_size=None, shuffle=False,
                                         num_workers=cfg["num_workers"], pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if cfg["num_workers"] else None)
    errors = _embed_all(embedder, tqdm(loader, desc=f"dump {run} fold {fold}", unit="series", disable=rank > 0))
    if errors:
        raise PipelineError(f"{len(errors)} series failed, first {errors[0]}")


def _embed_all(embedder, items):
    """Embed and save every loaded series; on a GPU consecutive series share one pass
    (``embedder.group`` slices, rsna_pe.infer.embed), each series' embeddings still saved on their own,
    and a pass's files are written while the GPU runs the next one. Returns the load errors."""
    errors, batch, pending = [], [], []

    def save():
        series, finish = pending.pop()
        for (dst, labels, sop), feats in zip(series, finish()):
            atomic_savez(dst, embeddings=feats, labels=labels, sop=sop)

    def flush():
        finish = embedder.start_many([imgs for _, imgs, _, _ in batch])
        if pending:
            save()
        pending.append(([(dst, labels, sop) for dst, _, labels, sop in batch], finish))
        batch.clear()

    for dst, imgs, labels, sop, err in items:
        if err:
            log.warning(err)
            errors.append(err)
            continue
        batch.append((dst, imgs, labels, sop))
        if sum(len(b[1]) for b in batch) >= embedder.group:
            flush()
    if batch:
        flush()
    if pending:
        save()
    return errors


if __name__ == "__main__":
    cli.run(main)
