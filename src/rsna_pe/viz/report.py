"""report.png of one study: the probability along z, the exam labels, the most suspicious slice
in its three windows, and the top slices with their activation maps."""
import textwrap

import numpy as np

from ..core.io import atomic_path
from ..core.labels import EXAM_LABELS
from ..data.windows import WINDOWS

TOP_SHOWN = 4  # top slices drawn with their maps in the last row
PE_CHANNEL = list(WINDOWS).index("pe")


def _curve(ax, img_prob, cams, title):
    ax.plot(np.arange(len(img_prob)), img_prob, color="tab:red")
    if cams:
        ks = sorted(cams)
        ax.scatter(ks, img_prob[ks], color="tab:purple", s=14, zorder=3, label="activation map")
        ax.legend(loc="upper right", fontsize=8)
    ax.axhline(0.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="slice (z order, feet to head)", ylabel="P(PE on image)", ylim=(0, 1))
    # The title holds header values (a UID may hold "$", "^", "_"): plain text, never mathtext or LaTeX.
    ax.set_title(title, parse_math=False, usetex=False)


def _overlay(ax, grey, cam, label):
    ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
    if cam is not None:
        # Below a fifth of its peak the map is hidden, so the anatomy stays readable.
        ax.imshow(np.ma.masked_less(cam, 0.2), cmap="jet", vmin=0, vmax=1, alpha=0.45,
                  extent=(-0.5, grey.shape[1] - 0.5, grey.shape[0] - 0.5, -0.5))
    ax.set_title(label, fontsize=9)
    ax.axis("off")


def draw_report(path, img_prob, exam_prob, previews, cams=None, title="", no_maps=""):
    """``previews`` uint8 (S, 3, s, s) in WINDOWS order; ``cams`` {slice index: map (s, s)};
    ``title`` is shown as plain text; ``no_maps``: why there can be no activation maps, if so
    (written where the map would be)."""
    # Lazy: matplotlib is heavy and only the report draws; the Agg backend must be chosen before
    # pyplot is imported (no display on a server).
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cams, img_prob = cams or {}, np.asarray(img_prob)
    fig = plt.figure(figsize=(13, 10), layout="constrained")
    # Two subfigures: the bars' long labels would otherwise widen an image column below them.
    top_fig, img_fig = fig.subfigures(2, 1, height_ratios=[1.1, 2])
    curve, bars = top_fig.subplots(1, 2, width_ratios=[3, 1])
    _curve(curve, img_prob, cams, title)
    bars.barh(list(EXAM_LABELS)[::-1], exam_prob[::-1], color="tab:blue")
    bars.axvline(0.5, color="grey", ls="--", lw=1)
    bars.set(xlim=(0, 1), title="exam labels (post-processed)")
    axes = img_fig.subplots(2, TOP_SHOWN)
    k = int(np.argmax(img_prob))
    for c, name in enumerate(WINDOWS):
        _overlay(axes[0, c], previews[k][c], None, f"slice {k} ({img_prob[k]:.2f}): {name} window")
    _overlay(axes[0, 3], previews[k][PE_CHANNEL], cams.get(k),
             f"slice {k}: activation map" if k in cams else f"slice {k}: no activation map")
    if no_maps:
        axes[0, 3].text(0.5, 0.5, textwrap.fill(no_maps, 34), transform=axes[0, 3].transAxes, ha="center",
                        va="center", fontsize=8, color="white", parse_math=False,
                        bbox={"facecolor": "black", "alpha": 0.6})
    top = np.argsort(-img_prob, kind="stable")[:TOP_SHOWN]
    for c, t in enumerate(top):
        _overlay(axes[1, c], previews[t][PE_CHANNEL], cams.get(int(t)),
                 f"#{c + 1}: slice {t} ({img_prob[t]:.2f}), PE window")
    for ax in axes[1, len(top):]:  # studies with fewer slices than TOP_SHOWN
        ax.axis("off")
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
