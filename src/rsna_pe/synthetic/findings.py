"""A study's findings and the exam labels they give, by the competition's rules.

- an embolus is a filling defect (30-90 HU) inside a contrast-filled artery over a run of
  consecutive slices; ``pe_present_on_image`` is 1 on exactly those slices;
- its site sets ``central_pe`` (trunk, main arteries), ``rightsided_pe`` / ``leftsided_pe``;
- its shape sets the chronicity: acute = central defect with contrast all round, chronic =
  eccentric wall-adherent crescent; an exam with both kinds is ``acute_and_chronic_pe``;
- the RV/LV chamber size ratio sets ``rv_lv_ratio_gte_1`` / ``rv_lv_ratio_lt_1``;
- indeterminate exams have poor contrast (arteries ~110 HU, ``qa_contrast``) or motion
  ghosting (``qa_motion``) and no emboli.

Pairs ``(lo, hi)`` are the ranges a study's value is drawn from.
"""
from dataclasses import dataclass

import numpy as np

from ..core.labels import EXAM_LABELS, QA_COLUMNS
from .anatomy import LPA_T, PA_HALF, RPA_T

# Where an embolus may sit: t-range per site (main arteries: where the tube is >= 70 % wide).
SITE_T = {
    "trunk": (0.46, 0.62),
    "rpa": (RPA_T - 0.7 * PA_HALF, RPA_T + 0.7 * PA_HALF),
    "lpa": (LPA_T - 0.7 * PA_HALF, LPA_T + 0.7 * PA_HALF),
    "r_lower": (0.12, 0.58),
    "l_lower": (0.12, 0.58),
    "r_upper": (0.72, 0.92),
    "l_upper": (0.72, 0.92),
}
CENTRAL_SITES = ("trunk", "rpa", "lpa")
CENTRAL_WEIGHTS = (0.5, 0.25, 0.25)  # which central site, when an exam has a central clot
RIGHT_SITES = ("rpa", "r_lower", "r_upper")
LEFT_SITES = ("lpa", "l_lower", "l_upper")
LOBAR_SITES = ("r_lower", "l_lower", "r_upper", "l_upper")
LOBAR_WEIGHTS = (0.35, 0.3, 0.2, 0.15)

# Shares of exams, exact per set (see :func:`exact_assign`); small sets still get one each.
INDETERMINATE_SHARE = 0.04  # of all exams
CHRONIC_SHARE, ACUTE_AND_CHRONIC_SHARE = 0.12, 0.08  # of positive exams; the rest acute
CENTRAL_SHARE = 0.2  # of positive exams
RV_LV_GTE_SHARE = 0.45  # of positive exams
# Emboli per positive exam (one more in an acute-and-chronic exam) and their probabilities.
EMBOLUS_COUNTS, EMBOLUS_COUNT_P = (1, 2, 3, 4), (0.3, 0.35, 0.25, 0.1)
MAX_RUN_SHARE = 0.6  # an embolus spans at most this share of its site's slices
# Defect radius (share of the artery radius) and HU per kind.
DEFECT = {"acute": ((0.8, 0.9), (30, 60)), "chronic": ((0.75, 0.85), (50, 90))}
ALONG_START, ALONG_LENGTH = (0.1, 0.45), (0.35, 0.5)  # part of a main artery's length filled
RV_LV_GTE, RV_LV_LT = (1.15, 1.45), (0.62, 0.85)  # RV/LV diameter ratio

# Contrast in the pulmonary arteries (HU): diagnostic, poor (an indeterminate exam), and weak
# (a qa_contrast remark on a diagnostic exam).
CONTRAST_HU, POOR_CONTRAST_HU, WEAK_CONTRAST_HU = (300, 420), (90, 130), (200, 250)
# Chances of a quality remark or a non-embolic finding on a diagnostic exam.
QA_CONTRAST_P, QA_MOTION_P, FLOW_ARTIFACT_P = 0.02, 0.02, 0.05
NOT_PE_DEFECT_P = 0.03  # true_filling_defect_not_pe, on negative exams only


@dataclass
class Embolus:
    site: str
    kind: str            # "acute" | "chronic"
    k0: int              # first and last slice index (z order) it is drawn on
    k1: int
    size: float          # defect radius as a fraction of the artery radius
    angle: float         # where a chronic defect hugs the wall; jitter direction for acute ones
    hu: float
    along: tuple = (0.25, 0.75)  # part of a main artery's length it fills


def exact_assign(rng, n, fractions, minimum=None):
    """Shuffled list of n category names with counts as close as possible to the fractions.

    ``minimum`` maps a name to (at_least, only_if_n_at_least) so small sets still hold
    every kind of case; it applies only to a name with a fraction above 0 and only as far as
    the n places allow."""
    counts = {k: int(round(f * n)) for k, f in fractions.items()}
    while sum(counts.values()) > n:  # rounding up twice can overshoot by one
        counts[max(counts, key=counts.get)] -= 1
    for k, (least, if_n) in (minimum or {}).items():
        if n >= if_n and fractions[k] > 0:
            counts[k] += max(0, min(least - counts[k], n - sum(counts.values())))
    rest = n - sum(counts.values())
    out = [k for k, c in counts.items() for _ in range(c)] + ["rest"] * rest
    rng.shuffle(out)
    return out


def assign_cases(rng, n, positive_fraction=1 / 3):
    """Per study: (case, positive subtype, central wanted, RV/LV >= 1), with exact shares so
    that small sets still hold every label: ``positive_fraction`` positive (a third in the
    competition data), a few percent indeterminate."""
    cases = exact_assign(rng, n, {"positive": positive_fraction,
                                  "indeterminate": min(INDETERMINATE_SHARE, 1 - positive_fraction)},
                         {"positive": (1, 2), "indeterminate": (1, 8)})
    n_pos = cases.count("positive")
    sub = iter(exact_assign(rng, n_pos, {"chronic": CHRONIC_SHARE,
                                         "acute_and_chronic": ACUTE_AND_CHRONIC_SHARE},
                            {"chronic": (1, 4), "acute_and_chronic": (1, 5)}))
    central = iter(exact_assign(rng, n_pos, {"central": CENTRAL_SHARE}, {"central": (1, 3)}))
    rvlv = iter(exact_assign(rng, n_pos, {"gte": RV_LV_GTE_SHARE}, {"gte": (1, 2)}))
    out, n_indet = [], 0
    for c in cases:
        if c == "positive":
            s = next(sub)
            out.append(("positive", "acute" if s == "rest" else s, next(central) == "central",
                        next(rvlv) == "gte"))
        elif c == "indeterminate":  # alternately poor contrast and motion
            why = "contrast" if n_indet % 2 == 0 else "motion"
            out.append(("indeterminate", why, False, False))
            n_indet += 1
        else:
            out.append(("negative", None, False, False))
    return out


def quality(r, kind, sub):
    """(qa columns, arterial contrast HU, motion ghosting, flow artefact) of one exam."""
    qa = {k: 0 for k in QA_COLUMNS}
    contrast = float(r.uniform(*CONTRAST_HU))
    motion = flow = False
    if kind == "indeterminate":
        if sub == "contrast":
            qa["qa_contrast"], contrast = 1, float(r.uniform(*POOR_CONTRAST_HU))
        else:
            qa["qa_motion"], motion = 1, True
    else:  # diagnostic exams: rare QA remarks, flow artefacts, non-embolic defects
        if r.random() < QA_CONTRAST_P:
            qa["qa_contrast"], contrast = 1, float(r.uniform(*WEAK_CONTRAST_HU))
        if r.random() < QA_MOTION_P:
            qa["qa_motion"] = 1
        if r.random() < FLOW_ARTIFACT_P:
            qa["flow_artifact"], flow = 1, True
        if kind == "negative" and r.random() < NOT_PE_DEFECT_P:
            qa["true_filling_defect_not_pe"] = 1
    return qa, contrast, motion, flow


def central_sites_in_view(t):
    """(central sites with a slice at positions ``t`` in their range, their weights scaled to
    sum to 1); all of them when the slices hold none (the clot then gives way to a lobar one)."""
    t = np.asarray(t)
    seen = [i for i, s in enumerate(CENTRAL_SITES)
            if ((t >= SITE_T[s][0]) & (t <= SITE_T[s][1])).any()]
    if not seen:
        return CENTRAL_SITES, CENTRAL_WEIGHTS
    w = np.array([CENTRAL_WEIGHTS[i] for i in seen])
    return tuple(CENTRAL_SITES[i] for i in seen), tuple(w / w.sum())


def draw_emboli(r, t, sub, central, central_in_view=False):
    """The emboli of a positive exam of subtype ``sub`` on slices at positions ``t``.
    ``central_in_view``: a central clot's site is drawn among the central arteries the slices
    show (a thin slab may miss one); otherwise among all three, as the whole chest shows them."""
    n_e = int(r.choice(EMBOLUS_COUNTS, p=EMBOLUS_COUNT_P)) + (sub == "acute_and_chronic")
    sites = [str(x) for x in r.choice(LOBAR_SITES, size=n_e, p=LOBAR_WEIGHTS)]
    if central:
        where, p = central_sites_in_view(t) if central_in_view else (CENTRAL_SITES, CENTRAL_WEIGHTS)
        sites[0] = str(r.choice(where, p=p))
    if sub == "acute_and_chronic":
        kinds = ["acute", "chronic"] + [str(r.choice(["acute", "chronic"]))
                                        for _ in range(n_e - 2)]
    else:
        kinds = [sub] * n_e
    return place_emboli(r, t, sites, kinds)


def _site_slices(rng, t, site):
    """(site, indices of the slices in its t-range); a site with none gives way to a lobar one."""
    for s in [site] + [s for s in rng.permutation(LOBAR_SITES)]:
        lo, hi = SITE_T[s]
        ok = np.flatnonzero((t >= lo) & (t <= hi))
        if len(ok):
            return s, ok
    return None, None  # fewer than about three slices: nowhere to put it


def place_emboli(rng, t, sites_wanted, kinds):
    """One embolus per (site, kind); a site with no slice in its range gives way to a lobar one."""
    emboli = []
    t = np.asarray(t)
    for site, kind in zip(sites_wanted, kinds):
        s, ok = _site_slices(rng, t, site)
        if s is None:
            continue
        longest = max(1, int(round(MAX_RUN_SHARE * len(ok))))
        length = int(rng.integers(min(2, longest), longest + 1)) if longest > 1 else 1
        start = int(rng.integers(0, len(ok) - length + 1))
        k0, k1 = int(ok[start]), int(ok[start + length - 1])
        size_range, hu_range = DEFECT[kind]
        size, hu = float(rng.uniform(*size_range)), float(rng.uniform(*hu_range))
        a = float(rng.uniform(*ALONG_START))
        emboli.append(Embolus(s, kind, k0, k1, size, float(rng.uniform(0, 2 * np.pi)), hu,
                              (a, a + float(rng.uniform(*ALONG_LENGTH)))))
    return emboli


def draw_rv_lv(r, rv_gte):
    """The RV/LV diameter ratio of an exam, on the side of 1 that its label says."""
    return float(r.uniform(*RV_LV_GTE) if rv_gte else r.uniform(*RV_LV_LT))


def exam_labels(emboli, case, rv_gte_1, qa):
    """Exam-level csv columns (EXAM_LABELS + QA_COLUMNS) of a study with these findings."""
    lab = {k: 0 for k in EXAM_LABELS + QA_COLUMNS}
    lab.update(qa)
    if not emboli:
        lab["indeterminate" if case == "indeterminate" else "negative_exam_for_pe"] = 1
        return lab
    sites = {e.site for e in emboli}
    kinds = {e.kind for e in emboli}
    lab["central_pe"] = int(bool(sites & set(CENTRAL_SITES)))
    lab["rightsided_pe"] = int(bool(sites & set(RIGHT_SITES)))
    lab["leftsided_pe"] = int(bool(sites & set(LEFT_SITES)))
    lab["chronic_pe"] = int(kinds == {"chronic"})
    lab["acute_and_chronic_pe"] = int(kinds == {"acute", "chronic"})
    lab["rv_lv_ratio_gte_1" if rv_gte_1 else "rv_lv_ratio_lt_1"] = 1
    return lab
