"""The report's PNG plots: ROC curves with their bootstrap band, reliability diagrams and a
forest plot of AUC by subgroup. Each returns the PNG bytes (the html page embeds them)."""
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL_IN = 3.0  # inches per small-multiple panel
COLUMNS = 4
DPI = 100


def _figure(n_panels):
    cols = max(1, min(COLUMNS, n_panels))
    rows = max(1, math.ceil(n_panels / cols))
    fig = Figure(figsize=(PANEL_IN * cols, PANEL_IN * rows + 0.3), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n_panels)]
    return fig, axes


def _png(fig):
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp: same bytes each run
    return buf.getvalue()


def _title(ax, text):
    # Labels and group names are data: plain text, never mathtext ("$") or LaTeX.
    ax.set_title(text, fontsize=9, parse_math=False, usetex=False)


def _fmt(x):
    return "-" if x is None or not np.isfinite(x) else f"{x:.3f}"


def roc(panels):
    """panels: [(label, metrics, curves)] -> PNG of each ROC with its 95 % bootstrap band."""
    fig, axes = _figure(len(panels))
    for ax, (label, m, c) in zip(axes, panels):
        if c["band"] is not None:
            ax.fill_between(c["band"]["fpr"], c["band"]["lo"], c["band"]["hi"], color="tab:blue",
                            alpha=0.2, lw=0, label="95 % bootstrap band")
        fpr, tpr = c["roc"]
        if fpr:
            ax.plot(fpr, tpr, color="tab:blue", lw=1.5, label="ROC")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity")
        lo, hi = m["auc_ci"]
        _title(ax, f"{label}\nAUC {_fmt(m['auc'])} [{_fmt(lo)}, {_fmt(hi)}], n={m['n']}")
    if axes:
        axes[0].legend(loc="lower right", fontsize=7)
    return _png(fig)


def reliability(panels):
    """panels: [(title, {series name: reliability rows})] -> PNG of observed share of
    positives against mean predicted probability per bin (marker area ~ studies in the bin)."""
    fig, axes = _figure(len(panels))
    colours = ("tab:blue", "tab:orange", "tab:green")
    for ax, (title, series) in zip(axes, panels):
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8)
        for colour, (name, rows) in zip(colours, series.items()):
            used = [r for r in rows if r["n"]]
            if used:
                ax.plot([r["mean_p"] for r in used], [r["frac_pos"] for r in used], color=colour, lw=1)
                ax.scatter([r["mean_p"] for r in used], [r["frac_pos"] for r in used], color=colour,
                           s=[8 + 4 * r["n"] for r in used], alpha=0.7, label=name)
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="mean predicted probability",
               ylabel="share positive")
        _title(ax, title)
        ax.legend(loc="upper left", fontsize=7)
    return _png(fig)


def forest(rows, label):
    """rows: [(text, auc, [lo, hi], n)] top to bottom (the first is the whole site) -> PNG of
    the AUC of ``label`` per subgroup with its 95 % interval."""
    fig = Figure(figsize=(7.5, 0.9 + 0.32 * len(rows)), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(len(rows))[::-1]
    for yy, (_, a, (lo, hi), _n) in zip(y, rows):
        if np.isfinite(a):
            ax.plot([lo, hi], [yy, yy], color="black", lw=1.2)
            ax.plot([a], [yy], "s", color="tab:blue", ms=5)
    if rows and np.isfinite(rows[0][1]):
        ax.axvline(rows[0][1], color="tab:blue", ls=":", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{t} (n={n})" for t, _, _, n in rows], fontsize=8, parse_math=False)
    ax.set(xlim=(0, 1.02), xlabel=f"AUC of {label} (95 % bootstrap interval)")
    _title(ax, f"{label}: AUC by subgroup")
    return _png(fig)
