"""Draw the pipeline overview (fig/pipeline.png): DICOM to submission in seven stages.

Usage: python fig/draw_pipeline.py [-o fig/pipeline.png] [--dpi 150]
Window values and label counts are read from the package, so the figure follows the code.
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
from rsna_pe.core.labels import EXAM_LABELS
from rsna_pe.data.windows import WINDOWS

# Fill and edge colour per kind of step.
COLORS = {
    "data": ("#eeeeee", "#777777"),
    "prep": ("#dceefb", "#2f6f9f"),
    "cnn": ("#fde7cf", "#c0661a"),
    "rnn": ("#dff2dc", "#3d8a35"),
    "infer": ("#ece1f5", "#7446a0"),
}
BOX_W, BOX_H = 3.85, 2.2
COL_STEP, ROW_Y = 4.55, (5.2, 1.6)
CHANNELS = ("R", "G", "B")
CHANNEL_NAMES = {"lung": "lung", "pe": "PE", "mediastinal": "mediastinal"}


def stages():
    """(key, kind, title, detail lines) in pipeline order."""
    windows = [f"{ch} {CHANNEL_NAMES[name]}  {lv}/{wd}"
               for ch, (name, (lv, wd)) in zip(CHANNELS, WINDOWS.items())]
    n_exam = len(EXAM_LABELS)
    return [
        ("dicom", "data", "DICOM CT", ["data/train/<study>/<series>/", "*.dcm, int16 512×512",
                                        "HU per slice, z order"]),
        ("s1", "prep", "1  make_image", ["3-window JPEG, 512²", *windows]),
        ("s2", "prep", "2  make_csv", ["StratifiedKFold: 15 folds", "on negative_exam_for_pe",
                                       "k_fold 3: fold f val = 5f..5f+4"]),
        ("s3", "cnn", "3  train CNN", ["rexnet_200 + GeM → 1 logit", "pe_present_on_image",
                                        "BCE & focal × 3 folds = 6 runs"]),
        ("s4", "prep", "4  make_npz", ["one .npz per series", "imgs uint8 (S,3,512,512)",
                                       "labels (S,10), z order"]),
        ("s5", "cnn", "5  dump_embeddings", ["6 CNN checkpoints", "pooled 2560-d per slice",
                                             "dump/v1/<run>/fold_<k>/"]),
        ("s6", "rnn", "6  train bi-LSTM", ["double bi-LSTM + attention",
                                                 "image head: PE per slice",
                                                 f"exam head: {n_exam} exam labels"]),
        ("s7", "infer", "7  inference", ["test DICOM → CNN → RNN",
                                         "6 pairs: post-process each",
                                         "average, post-process again"]),
        ("sub", "data", "submission.csv", ["id,label", "1 row per image", f"{n_exam} rows per study"]),
    ]


def layout(n_first_row=5):
    """Box centres: the first row left to right, then the second row left to right."""
    centres = []
    for i in range(len(stages())):
        row, col = (0, i) if i < n_first_row else (1, i - n_first_row + 0.5)
        centres.append((col * COL_STEP + BOX_W / 2, ROW_Y[row]))
    return centres


def draw_box(ax, centre, kind, title, lines):
    fill, edge = COLORS[kind]
    x, y = centre
    box = ax.add_patch(FancyBboxPatch((x - BOX_W / 2, y - BOX_H / 2), BOX_W, BOX_H,
                                      boxstyle="round,pad=0.02,rounding_size=0.18",
                                      facecolor=fill, edgecolor=edge, linewidth=1.8))
    texts = [
        ax.text(x, y + BOX_H / 2 - 0.38, title, ha="center", va="center", fontsize=12,
                fontweight="bold", color=edge),
        ax.text(x, y - 0.2, "\n".join(lines), ha="center", va="center", fontsize=9.5,
                linespacing=1.45, color="#222222"),
    ]
    return box, texts


def spills(fig, boxes, margin_px=4):
    """Texts whose drawn extent leaves their box (a layout bug: the text would cross the edge)."""
    renderer = fig.canvas.get_renderer()
    bad = []
    for box, texts in boxes:
        outer = box.get_window_extent(renderer).padded(-margin_px)
        for t in texts:
            e = t.get_window_extent(renderer)
            if e.x0 < outer.x0 or e.x1 > outer.x1 or e.y0 < outer.y0 or e.y1 > outer.y1:
                bad.append(t.get_text().splitlines()[0])
    return bad


def arrow(ax, path, color="#444444"):
    """An arrow along a polyline of points (only the last segment carries the head)."""
    for a, b in zip(path[:-2], path[1:-1]):
        ax.plot([a[0], b[0]], [a[1], b[1]], color=color, linewidth=1.8, solid_capstyle="round")
    ax.add_patch(FancyArrowPatch(path[-2], path[-1], arrowstyle="-|>", mutation_scale=18,
                                 color=color, linewidth=1.8, shrinkA=0, shrinkB=0))


def draw(out, dpi=150):
    items = stages()
    centres = layout()
    fig, ax = plt.subplots(figsize=(16, 7.2))
    ax.set_xlim(-0.3, 4 * COL_STEP + BOX_W + 0.3)
    ax.set_ylim(0.0, 7.0)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(ax.get_xlim()[0] + 0.1, 6.75, "RSNA STR PE pipeline: CNN per slice, bi-LSTM per series",
            ha="left", va="center", fontsize=14, fontweight="bold")

    legend = [("data", "data"), ("prep", "preprocessing"), ("cnn", "CNN"), ("rnn", "RNN"),
              ("infer", "inference")]
    x = ax.get_xlim()[1] - 0.1
    for kind, name in reversed(legend):
        fill, edge = COLORS[kind]
        t = ax.text(x, 6.75, name, ha="right", va="center", fontsize=10.5, color="#222222",
                    bbox=dict(boxstyle="round,pad=0.3", facecolor=fill, edgecolor=edge))
        # Step left by the drawn width of this label so the gaps are even.
        box = t.get_window_extent(fig.canvas.get_renderer())
        x = ax.transData.inverted().transform((box.x0, box.y0))[0] - 0.35

    boxes = [draw_box(ax, c, kind, title, lines)
             for (_, kind, title, lines), c in zip(items, centres)]
    bad = spills(fig, boxes)
    if bad:
        plt.close(fig)
        raise ValueError(f"text does not fit its box: {bad}; widen BOX_W or shorten the text")

    gap = 0.06
    for i in range(len(items) - 1):
        (x0, y0), (x1, y1) = centres[i], centres[i + 1]
        if y0 == y1:  # same row: straight right
            arrow(ax, [(x0 + BOX_W / 2 + gap, y0), (x1 - BOX_W / 2 - gap, y1)])
        else:  # end of the first row: down, back left, down into the second row
            mid = (y0 - BOX_H / 2 + y1 + BOX_H / 2) / 2
            arrow(ax, [(x0, y0 - BOX_H / 2 - gap), (x0, mid), (x1, mid),
                       (x1, y1 + BOX_H / 2 + gap)])

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", default=str(REPO / "fig" / "pipeline.png"), help="PNG to write")
    p.add_argument("--dpi", type=int, default=150)
    args = p.parse_args(argv)
    print(draw(args.out, args.dpi))


if __name__ == "__main__":
    main()
