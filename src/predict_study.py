"""One study, raw DICOM -> exam and per-slice PE probabilities, as JSON and a PNG report.

    python src/predict_study.py SERIES_DIR [-c configs/inference.yml] [--out DIR] [key=value ...]

Uses the same ensemble, reading and post-processing as inference.py. Prints the nine exam
probabilities and the slices most likely to show PE; writes ``<out>/prediction.json`` and
``<out>/report.png`` (probability along z, exam bars, the windows of the most suspicious slice).
"""
import json
import logging
from pathlib import Path

import numpy as np

from rsna_pe import cli
from rsna_pe.runtime import pick_device
from rsna_pe.errors import PipelineError
from rsna_pe.io import atomic_path, atomic_write_text
from rsna_pe.labels import EXAM_LABELS
from rsna_pe.predict import Ensemble, resolve_pairs
from rsna_pe.windows import WINDOWS

log = logging.getLogger("predict_study")


def draw_report(path, sops, img_prob, exam_prob, slice_rgb, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(12, 7), constrained_layout=True)
    grid = fig.add_gridspec(2, 3, height_ratios=[1.2, 1])
    ax = fig.add_subplot(grid[0, :2])
    ax.plot(np.arange(len(img_prob)), img_prob, color="tab:red")
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="slice (z order, feet to head)", ylabel="P(PE on image)", ylim=(0, 1), title=title)
    bars = fig.add_subplot(grid[0, 2])
    bars.barh(list(EXAM_LABELS)[::-1], exam_prob[::-1], color="tab:blue")
    bars.axvline(0.5, color="grey", ls="--", lw=1)
    bars.set(xlim=(0, 1), title="exam-level probability")
    k = int(np.argmax(img_prob))
    for c, name in enumerate(WINDOWS):
        a = fig.add_subplot(grid[1, c])
        a.imshow(slice_rgb[c], cmap="gray", vmin=0, vmax=255)
        a.set_title(f"slice {k} ({img_prob[k]:.2f}): {name} window", fontsize=9)
        a.axis("off")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def main(argv=None):
    def add(p):
        p.add_argument("series_dir", type=Path, help="folder of one series' .dcm files")
        p.add_argument("--out", type=Path, default=None,
                       help="output folder (default: output/predict_study/<series folder name>)")
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=add)
    if not args.series_dir.is_dir():
        raise PipelineError(f"{args.series_dir}: not a folder")
    out = args.out or Path("output/predict_study") / args.series_dir.name
    ens = Ensemble(resolve_pairs(cfg), pick_device(cfg["device"]), chunk=cfg["batch_size"], amp=cfg["amp"],
                   channels_last=cfg["channels_last"], compile=False, tta_flip=cfg["tta_flip"])
    infos, images = ens.read(args.series_dir)
    exam, img = ens.predict(images)
    result = {
        "series_dir": str(args.series_dir),
        "exam": {k: float(v) for k, v in zip(EXAM_LABELS, exam)},
        "pe_present": bool(img.max() > 0.5),
        "slices": [{"z_pos_order": k, "sop": i.sop, "z": i.z, "pe_present_on_image": float(p)}
                   for k, (i, p) in enumerate(zip(infos, img))],
    }
    atomic_write_text(out / "prediction.json", json.dumps(result, indent=1))
    draw_report(out / "report.png", [i.sop for i in infos], img, exam,
                images[max(images)][int(np.argmax(img))], title=args.series_dir.name)
    width = max(map(len, EXAM_LABELS))
    print(f"{args.series_dir}: {len(img)} slices, PE {'present' if result['pe_present'] else 'absent'}")
    for k, v in result["exam"].items():
        print(f"  {k:<{width}} {v:.3f}")
    top = np.argsort(-img)[:5]
    print("  most suspicious slices (z order: prob): " + ", ".join(f"{k}: {img[k]:.3f}" for k in top))
    print(f"wrote {out / 'prediction.json'} and {out / 'report.png'}")


if __name__ == "__main__":
    cli.run(main)
