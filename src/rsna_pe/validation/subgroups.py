"""Subgroups of a site's studies by acquisition (manufacturer, model, kVp, slice thickness,
kernel) or any other column: groups below a minimum size are pooled, and the report says so."""
from typing import NamedTuple

import numpy as np

UNKNOWN = "unknown"
# Slice thickness is binned (a scanner writes many exact values): upper edges in mm.
THICKNESS_BINS = ((1.25, "<= 1.25 mm"), (3.0, "1.25-3 mm"), (5.0, "3-5 mm"), (np.inf, "> 5 mm"))


class Group(NamedTuple):
    name: str
    studies: list
    pooled_from: list  # the groups merged into this one ([] for a group of its own)
    small: bool        # under the minimum size even after pooling


def _number_text(text):
    """'120.0' -> '120', '1.25' -> '1.25'; any other text as it is."""
    try:
        x = float(text)
    except ValueError:
        return text
    return f"{x:g}" if np.isfinite(x) else text


def _thickness(text):
    try:
        x = float(text)
    except ValueError:
        return text
    return next(name for edge, name in THICKNESS_BINS if x <= edge)


def values_of(column, series):
    """Group names of a column's values: blank -> 'unknown'; numbers without trailing zeros;
    slice_thickness in THICKNESS_BINS."""
    out = series.astype(object).where(series.notna(), None)
    conv = _thickness if column == "slice_thickness" else _number_text
    return out.map(lambda v: UNKNOWN if v is None or str(v).strip() == "" else conv(str(v).strip()))


def groups(values, min_size):
    """Groups of studies by value (``values``: Series study -> group name), largest first; the
    groups below ``min_size`` studies are pooled into one named after them (a single small group
    has nothing to pool with and keeps its name; ``small`` marks either when still too small)."""
    counts = values.value_counts(sort=False)
    order = sorted(counts.index, key=lambda k: (-counts[k], str(k)))
    small = [k for k in order if counts[k] < min_size]
    out = [Group(str(k), sorted(values.index[values == k]), [], False) for k in order if k not in small]
    if small:
        members = sorted(values.index[values.isin(small)])
        name = "pooled: " + ", ".join(map(str, small)) if len(small) > 1 else str(small[0])
        out.append(Group(name, members, [str(k) for k in small] if len(small) > 1 else [],
                         len(members) < min_size))
    return out


def subgroup_sets(table, studies, min_size):
    """{column: [Group]} for each column of ``table`` (index: study) over ``studies``; a
    column with a single group says nothing and is left out."""
    table = table.reindex(studies)
    out = {}
    for column in table.columns:
        g = groups(values_of(column, table[column]), min_size)
        if len(g) > 1:
            out[str(column)] = g
    return out


def pooled_notes(sets, min_size):
    """One sentence per pooled group, for the report."""
    notes = []
    for column, gs in sets.items():
        for g in gs:
            below = " (still under the minimum: read its numbers with care)" if g.small else ""
            if g.pooled_from:
                notes.append(f"{column}: {len(g.pooled_from)} groups under {min_size} studies pooled "
                             f"into one of {len(g.studies)}{below}: {', '.join(g.pooled_from)}")
            elif g.small:
                notes.append(f"{column}: group {g.name} has {len(g.studies)} studies, under {min_size}, "
                             "and no other small group to pool with")
    return notes
