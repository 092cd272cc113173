"""The chest phantom: body, lungs with vessel texture, spine and ribs, heart with its two
ventricles, aorta, and the contrast-filled pulmonary arterial tree, with the study's findings
(filling defects, flow artefact, motion) drawn in.

Geometry is in the normalised coordinates of :mod:`.shapes` (1 = half the field of view); t is
the anatomical position of a slice, 0 at the lung bases and 1 at the apices. Pairs ``(lo, hi)``
are the ranges a study's value is drawn from.
"""
import math

import numpy as np

from .shapes import Canvas, Capsule, Disk, lerp

HU_MIN, HU_MAX = -1024, 3071  # scanner range; padding lies outside it

# --- HU of the tissues ---
AIR_HU = -1000.0
SUBCUTANEOUS_FAT_HU = -100.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = (-880, -830)
LUNG_GRAVITY_HU = 50  # posterior lung is denser by up to this much (dependent atelectasis)
TRACHEA_HU = -990.0
MYOCARDIUM_HU = 45.0
LV_CONTRAST_SHARE = 0.75  # the left ventricle holds less contrast than the right one
AORTA_CONTRAST_SHARE, AORTA_HU = 0.65, 40  # aorta: 0.65 x contrast + 40 HU
SVC_CONTRAST_SHARE = 1.2  # the superior vena cava carries the undiluted bolus
CORTICAL_BONE_HU = 700.0
CANCELLOUS_BONE_HU = 250.0
SPINAL_CANAL_HU = 15.0
RIB_HU = 650.0  # ribs and spinous process
STERNUM_HU = 500.0
NOISE_HU = (10, 20)  # standard deviation of the image noise

# --- body and lungs ---
BODY_SCALE = (0.92, 1.04)  # patient size
BODY_JITTER = 0.02  # shift of the body and heart centres
BODY_CENTRE_Y = 0.02
BODY_HALF_AXES = (0.84, 0.6)  # times the body scale
FAT_THICKNESS = (0.04, 0.08)
MIDLINE_JITTER = 0.015  # shift of the mediastinum and spine
LUNG_CENTRE = (0.38, -0.02)  # x times the body scale, mirrored per side
LUNG_HALF_AXES = (0.27, 0.4)  # times the body scale and the profile along t
LUNG_PROFILE = (0.4, 1.6, 0.45)  # widest at t 0.4; 1 - 1.6 (t - 0.4)^2, at least 0.45
# Small lung vessels: straight 3-D segments, each drawn where a slice cuts it.
N_LUNG_VESSELS = 24  # per lung
VESSEL_T_START = (-0.05, 0.9)
VESSEL_T_LENGTH = (0.08, 0.4)
VESSEL_REACH = 0.8  # end points within this share of the lung's half axes
VESSEL_RADIUS = (0.008, 0.02)
VESSEL_CONTRAST_SHARE = (0.35, 0.8)
TRACHEA_T = 0.7  # the trachea shows above the carina
TRACHEA_CENTRE_Y, TRACHEA_HALF_AXES = 0.12, (0.055, 0.05)

# --- heart: a sine bump along t (from HEART_T_START over HEART_T_SPAN, shown below
# HEART_T_END); the ventricles show where the bump exceeds VENTRICLE_MIN ---
HEART_CENTRE = (0.08, -0.12)
HEART_T_START, HEART_T_SPAN, HEART_T_END = -0.02, 0.56, 0.54
HEART_MIN = 0.15
HEART_HALF_AXES = (0.26, 0.22)
VENTRICLE_MIN = 0.35
LV_RADIUS = 0.1  # the RV's is the study's RV/LV ratio times this
VENTRICLE_OFFSET = (0.09, 0.05)  # RV towards the patient's right and front, LV opposite
RV_FLATTENING = 0.85  # RV height / width

# --- aorta and superior vena cava ---
AORTA_T_END = 0.84  # descending and ascending aorta below the arch
ASCENDING_T_START = 0.5
ARCH_T = (0.8, 0.88)
DESCENDING_AORTA = Disk(0.15, 0.3, 0.05, 0.05)  # x relative to the midline
ASCENDING_AORTA = Disk(-0.16, -0.15, 0.055, 0.055)
SVC = Disk(-0.15, -0.03, 0.035, 0.035)
ARCH_RADIUS = 0.05

# --- pulmonary arteries ---
TRUNK_T = (0.44, 0.64)
RPA_T, LPA_T, PA_HALF = 0.64, 0.67, 0.05   # main arteries: horizontal tubes in a band of t
# Pulmonary arteries (and so their clots) are drawn wider than life, so that a clot still
# covers several pixels when a slice is shrunk to the demo's 64 px CNN input.
ARTERY_SCALE = 1.5
TRUNK_TOP = (0.06, -0.1)  # where the main arteries branch; x relative to the midline
TRUNK_BOTTOM = (0.02, -0.22)
TRUNK_RADIUS = 0.11
MAIN_RADIUS = 0.095
HILUM = (0.36, 0.08)  # where a main artery enters its lung; x mirrored per side
LOWER_T_START = 0.08  # lower lobe arteries run from here up to RPA_T
LOWER_RADIUS, LOWER_Y = (0.11, 0.09), (0.08, 0.18)  # at the hilum, at the bottom
LOWER_DRIFT = 0.02  # outwards towards the bottom
UPPER_T_GAP, UPPER_T_END = 0.04, 0.95  # upper lobe arteries from RPA_T + gap to the end
UPPER_RADIUS, UPPER_Y = (0.1, 0.08), (0.06, -0.06)  # at the hilum, at the top
FLOW_T_START, FLOW_T_END = (0.2, 0.4), (0.45, 0.6)  # t band of a flow artefact
FLOW_DIMMING = 0.3  # contrast lost at the posterior wall of a lower lobe artery
# A filling defect's centre, as a share of the artery radius off the artery's axis.
ACUTE_OFFSET = 0.1  # central: contrast all round it
CHRONIC_OFFSET = 0.8  # eccentric, against the wall: a crescent

# --- bones (y times the body scale) ---
VERTEBRA = (0.38, (0.08, 0.075), (0.06, 0.055))  # y, cortical and cancellous half axes
SPINAL_CANAL = (0.5, (0.032, 0.03))
SPINOUS_PROCESS = (0.56, (0.02, 0.035))
N_RIBS = 10  # per slice, on an arc from 0.25 pi to 1.75 pi inside the body wall
RIB_ARC = (0.25 * np.pi, 1.75 * np.pi)
RIB_TURNS, RIB_STAGGER, RIB_SHOWN = 6, 0.13, 0.2  # a rib shows where sin(...) > RIB_SHOWN
RIB_INSET, RIB_HALF_AXES = 0.035, (0.03, 0.022)
STERNUM_T = (0.35, 0.95)
STERNUM_INSET, STERNUM_HALF_AXES = 0.04, (0.06, 0.025)

# --- acquisition ---
MOTION_GHOST = 0.4  # ghost weight that makes an exam indeterminate
REMARK_GHOST = 0.12  # faint ghost on a diagnostic exam with a qa_motion remark
GHOST_SHIFT = 0.03  # share of the matrix


class Phantom:
    """A study's 3-D chest; ``slice(k, rng)`` returns its slice k in HU (float32, with noise).

    Build it with :func:`phantom` so that its geometry matches the written series."""

    def __init__(self, spec, rng):
        self.spec = spec
        j = lambda s: float(rng.uniform(-s, s))  # noqa: E731  small anatomical jitter
        self.scale = float(rng.uniform(*BODY_SCALE))
        self.body = (j(BODY_JITTER), BODY_CENTRE_Y + j(BODY_JITTER),
                     BODY_HALF_AXES[0] * self.scale, BODY_HALF_AXES[1] * self.scale)
        self.fat = float(rng.uniform(*FAT_THICKNESS))
        self.lung_hu = float(rng.uniform(*LUNG_HU))
        self.heart = (HEART_CENTRE[0] + j(BODY_JITTER), HEART_CENTRE[1] + j(BODY_JITTER))
        self.noise = float(rng.uniform(*NOISE_HU))
        self.dx = j(MIDLINE_JITTER)
        self.rib_phase = float(rng.uniform(0, 1))
        self.c = spec.contrast
        self.vessels = []
        for side in (-1, 1):
            for _ in range(N_LUNG_VESSELS):
                ta = float(rng.uniform(*VESSEL_T_START))
                tb = ta + float(rng.uniform(*VESSEL_T_LENGTH))
                p = rng.uniform(-VESSEL_REACH, VESSEL_REACH, size=4)
                self.vessels.append((side, ta, tb, *map(float, p),
                                     float(rng.uniform(*VESSEL_RADIUS)),
                                     float(rng.uniform(*VESSEL_CONTRAST_SHARE))))
        self.flow_t = (float(rng.uniform(*FLOW_T_START)), float(rng.uniform(*FLOW_T_END)))
        self._base = None

    # -- geometry along t --
    def lungs(self, t):
        widest, fall, least = LUNG_PROFILE
        prof = float(np.clip(1 - fall * (t - widest) ** 2, least, 1.0))
        s = self.scale
        return [Disk(side * LUNG_CENTRE[0] * s + self.dx, LUNG_CENTRE[1],
                     LUNG_HALF_AXES[0] * s * prof, LUNG_HALF_AXES[1] * s * prof)
                for side in (-1, 1)]

    def arteries(self, t):
        """Contrast-filled pulmonary arteries cut by the slice at t: {site: shape}."""
        out = {}
        d = self.dx
        top = (TRUNK_TOP[0] + d, TRUNK_TOP[1])
        if TRUNK_T[0] <= t <= TRUNK_T[1]:
            u = (t - TRUNK_T[0]) / (TRUNK_T[1] - TRUNK_T[0])
            out["trunk"] = Disk(lerp(TRUNK_BOTTOM[0], top[0], u), lerp(TRUNK_BOTTOM[1], top[1], u),
                                TRUNK_RADIUS * ARTERY_SCALE, TRUNK_RADIUS * ARTERY_SCALE)
        for site, tc, side in (("rpa", RPA_T, -1), ("lpa", LPA_T, 1)):
            if abs(t - tc) < PA_HALF:  # a tube lying in the slice plane: narrower off its axis
                r = MAIN_RADIUS * ARTERY_SCALE * math.sqrt(1 - ((t - tc) / PA_HALF) ** 2)
                out[site] = Capsule(top[0], top[1], side * HILUM[0] + d, HILUM[1], r)
        for side, name in ((-1, "r"), (1, "l")):
            out.update(self._lobar_arteries(t, side, name))
        return out

    def _lobar_arteries(self, t, side, name):
        out = {}
        x = side * HILUM[0] + self.dx
        if LOWER_T_START <= t <= RPA_T:
            u = (RPA_T - t) / (RPA_T - LOWER_T_START)
            r = lerp(*LOWER_RADIUS, u) * ARTERY_SCALE
            out[f"{name}_lower"] = Disk(x + side * LOWER_DRIFT * u, lerp(*LOWER_Y, u), r, r)
        if RPA_T + UPPER_T_GAP <= t <= UPPER_T_END:
            u = (t - RPA_T - UPPER_T_GAP) / (UPPER_T_END - RPA_T - UPPER_T_GAP)
            r = lerp(*UPPER_RADIUS, u) * ARTERY_SCALE
            out[f"{name}_upper"] = Disk(x, lerp(*UPPER_Y, u), r, r)
        return out

    def artery_masks(self, k):
        """{site: bool (matrix, matrix)} of the contrast-filled pulmonary arteries on slice k."""
        out = {}
        for site, shape in self.arteries(self.spec.t[k]).items():
            cv = Canvas(self.spec.matrix, 0.0)
            cv.paint(shape, 1.0)
            out[site] = cv.img > 0
        return out

    # -- one slice, painted back to front --
    def slice(self, k, rng):
        t = self.spec.t[k]
        cv = Canvas(self.spec.matrix, self._body_outline())
        self._paint_lungs(cv, t)
        self._paint_heart(cv, t)
        self._paint_aorta(cv, t)
        self._paint_pulmonary_arteries(cv, k, t)  # after the aorta so they stay whole
        self._paint_bones(cv, t)
        return self._acquire(cv.img, rng)

    def _body_outline(self):
        """Air, subcutaneous fat and soft tissue: the same on every slice, drawn once."""
        if self._base is None:
            bx, by, ax, ay = self.body
            cv = Canvas(self.spec.matrix, AIR_HU)
            cv.paint(Disk(bx, by, ax, ay), SUBCUTANEOUS_FAT_HU)
            cv.paint(Disk(bx, by, ax - self.fat, ay - self.fat), SOFT_TISSUE_HU)
            self._base = cv.img.copy()
        return self._base

    def _paint_lungs(self, cv, t):
        """Lung parenchyma, its small enhanced vessels, and the trachea above the carina."""
        lungs = self.lungs(t)
        for lung in lungs:  # gravity: posterior lung a little denser
            cv.paint(lung, lambda x, y, ly=lung: self.lung_hu + LUNG_GRAVITY_HU * (y - ly.cy) / ly.ry)
        for side, ta, tb, xa, ya, xb, yb, r, f in self.vessels:
            if ta <= t <= tb:
                lung = lungs[(side + 1) // 2]
                u = (t - ta) / (tb - ta)
                cx = lung.cx + lung.rx * lerp(xa, xb, u)
                cy = lung.cy + lung.ry * lerp(ya, yb, u)
                cv.paint(Disk(cx, cy, r, r), f * self.c, within=[lung])
        if t > TRACHEA_T:
            cv.paint(Disk(self.dx, TRACHEA_CENTRE_Y, *TRACHEA_HALF_AXES), TRACHEA_HU)

    def _paint_heart(self, cv, t):
        """Heart with the two ventricles (their size ratio is the RV/LV label)."""
        hx, hy = self.heart
        h = (math.sin(math.pi * (t - HEART_T_START) / HEART_T_SPAN) if t < HEART_T_END
             else 0.0)
        if h <= HEART_MIN:
            return
        heart = Disk(hx, hy, HEART_HALF_AXES[0] * h, HEART_HALF_AXES[1] * h)
        cv.paint(heart, MYOCARDIUM_HU)
        if h > VENTRICLE_MIN:
            r_lv = LV_RADIUS * h
            r_rv = r_lv * self.spec.rv_lv
            ox, oy = VENTRICLE_OFFSET
            cv.paint(Disk(hx - ox * h, hy - oy * h, r_rv, r_rv * RV_FLATTENING), self.c,
                     within=[heart])
            cv.paint(Disk(hx + ox * h, hy + oy * h, r_lv, r_lv), LV_CONTRAST_SHARE * self.c,
                     within=[heart])

    def _paint_aorta(self, cv, t):
        """Aorta (descending, ascending, arch) and superior vena cava."""
        aorta = AORTA_CONTRAST_SHARE * self.c + AORTA_HU
        at = lambda d: Disk(d.cx + self.dx, d.cy, d.rx, d.ry)  # noqa: E731  on the midline
        if t < AORTA_T_END:
            cv.paint(at(DESCENDING_AORTA), aorta)
        if ASCENDING_T_START < t < AORTA_T_END:
            cv.paint(at(ASCENDING_AORTA), aorta)
            cv.paint(at(SVC), SVC_CONTRAST_SHARE * self.c)
        if ARCH_T[0] <= t <= ARCH_T[1]:
            a, d = ASCENDING_AORTA, DESCENDING_AORTA
            cv.paint(Capsule(a.cx + self.dx, a.cy, d.cx + self.dx, d.cy, ARCH_RADIUS), aorta)

    def _paint_pulmonary_arteries(self, cv, k, t):
        """Contrast-filled arteries, a flow artefact if the study has one, and the emboli."""
        c = self.c
        arts = self.arteries(t)
        for site, shape in arts.items():
            cv.paint(shape, c)
        if self.spec.flow and self.flow_t[0] <= t <= self.flow_t[1]:
            # Flow artefact: mild, smooth under-opacification, far brighter than a thrombus.
            for site in ("r_lower", "l_lower"):
                a = arts.get(site)
                if a is not None:
                    cv.paint(a, lambda x, y, a=a: c - FLOW_DIMMING * c * np.clip((y - a.cy) / a.ry, 0, 1))
        for e in self.spec.emboli:
            if e.k0 <= k <= e.k1 and e.site in arts:
                paint_embolus(cv, arts[e.site], e)

    def _paint_bones(self, cv, t):
        """Vertebra, spinal canal, spinous process, ribs, sternum."""
        bx, by, ax, ay = self.body
        s, dx = self.scale, self.dx
        y, cortical, cancellous = VERTEBRA
        cv.paint(Disk(dx, y * s, *cortical), CORTICAL_BONE_HU)
        cv.paint(Disk(dx, y * s, *cancellous), CANCELLOUS_BONE_HU)
        cv.paint(Disk(dx, SPINAL_CANAL[0] * s, *SPINAL_CANAL[1]), SPINAL_CANAL_HU)
        cv.paint(Disk(dx, SPINOUS_PROCESS[0] * s, *SPINOUS_PROCESS[1]), RIB_HU)
        for i, ang in enumerate(np.linspace(*RIB_ARC, N_RIBS)):
            if math.sin(2 * math.pi * (RIB_TURNS * t + self.rib_phase + RIB_STAGGER * i)) > RIB_SHOWN:
                rx = bx + (ax - self.fat - RIB_INSET) * math.sin(ang)
                ry = by - (ay - self.fat - RIB_INSET) * math.cos(ang)
                cv.paint(Disk(rx, ry, *RIB_HALF_AXES), RIB_HU)
        if STERNUM_T[0] < t < STERNUM_T[1]:
            cv.paint(Disk(dx, by - ay + self.fat + STERNUM_INSET, *STERNUM_HALF_AXES), STERNUM_HU)

    def _acquire(self, img, rng):
        """Motion ghost and noise. The ghost is a shifted copy of the slice: strong enough to
        make the exam indeterminate when spec.motion, faint with a mere qa_motion remark."""
        spec = self.spec
        ghost = MOTION_GHOST if spec.motion else REMARK_GHOST if spec.labels["qa_motion"] else 0.0
        if ghost:
            shift = max(1, int(round(GHOST_SHIFT * spec.matrix)))
            img = (1 - ghost) * img + ghost * np.roll(img, shift, axis=1)
        return img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(self.noise)


def paint_embolus(cv, art, e):
    """A filling defect of embolus ``e`` inside artery ``art`` (a Disk crossing the slice or a
    Capsule lying in it): acute ones central, chronic ones eccentric against the wall."""
    ca, sa = math.cos(e.angle), math.sin(e.angle)
    offset = ACUTE_OFFSET if e.kind == "acute" else CHRONIC_OFFSET
    if isinstance(art, Disk):
        r = art.rx
        d = Disk(art.cx + offset * r * ca, art.cy + offset * r * sa, e.size * r, e.size * r)
        cv.paint(d, e.hu, within=[art])
        return
    # A main artery lying in the slice: the defect is a shorter tube inside it.
    dx, dy = art.qx - art.px, art.qy - art.py
    p = (art.px + e.along[0] * dx, art.py + e.along[0] * dy)
    q = (art.px + e.along[1] * dx, art.py + e.along[1] * dy)
    if e.kind == "acute":
        d = Capsule(*p, *q, e.size * art.r)
    else:
        norm = math.hypot(dx, dy)
        side = 1 if sa >= 0 else -1
        ox, oy = -dy / norm * side * offset * art.r, dx / norm * side * offset * art.r
        d = Capsule(p[0] + ox, p[1] + oy, q[0] + ox, q[1] + oy, e.size * art.r)
    cv.paint(d, e.hu, within=[art])


def phantom(spec):
    """(Phantom, rng) of a study, as :func:`render_series` draws it."""
    rng = np.random.default_rng(spec.seed)
    ph = Phantom(spec, rng)
    if spec.scanner is not None:  # scaled after the draw: the random stream stays the same
        ph.noise *= spec.scanner.noise_scale
    return ph, rng


def _stored_hu(img):
    return np.clip(np.rint(img), HU_MIN, HU_MAX).astype(np.int16)


def render_series(spec):
    """Yield (k, HU int16 (matrix, matrix)) for each slice in z order, without the padding
    outside the field of view (the data set writer adds it to the stored values)."""
    ph, rng = phantom(spec)
    shift = spec.scanner
    if shift is None or not shift.pixels_shifted:
        for k in range(spec.n_slices):
            yield k, _stored_hu(ph.slice(k, rng))
        return
    # Thick slabs mix neighbouring slices: the whole series first, then the scanner's changes.
    hu = shift.apply([ph.slice(k, rng) for k in range(spec.n_slices)], spec.matrix)
    for k in range(spec.n_slices):
        yield k, _stored_hu(hu[k])
