"""The optional lung crop of stage 1 (``jpeg_crop: lung``): one square box per series around
both lungs, found without a model, applied to every slice before windowing and resizing.

Stage 1 and inference (stage 7, predict_study) call ``lung_box`` on the same DICOM files, so a
test series is cropped exactly as its training JPEGs were. The box is found on up to
``MAX_SLICES`` slices evenly spaced in z (the lungs change slowly along z; reading a sample
keeps stage 1 at one slice in memory at a time):

- air = HU below the lung range's top; its connected components touching the image border are
  the air around the body, the padding outside the field of view and the partial-volume rim of
  the skin, and are dropped;
- lung = what is left inside the body with HU in ``LUNG_HU``; per slice the two largest
  components (the two lungs) of at least ``MIN_LUNG_SHARE`` of the slice are kept;
- the union of their bounding boxes over the sampled slices is padded by ``margin`` (a share
  of its longer side, on each side) and widened to a square about its centre (never
  stretched), shrunk to the image if larger and shifted back inside it if it sticks out.

A series where no slice holds such a component keeps the full image, with one log line.
Boxes are pixel coordinates of the original matrix, ``(x0, y0, x1, y1)``, half-open.
"""
import logging

import cv2
import numpy as np

from .dicom import read_dataset, read_series_order, series_where, to_hu

log = logging.getLogger(__name__)

LUNG_HU = (-950, -400)  # aerated lung; trachea, bowel gas and outside air lie below it
MIN_LUNG_SHARE = 0.01   # of a slice's pixels: smaller components are noise or gas, not a lung
MAX_SLICES = 32         # slices sampled per series
LUNG_COMPONENTS = 2     # per slice: the two lungs
# Bump when the boxes this code finds change, so JPEG sets made by another version are stale.
CROP_VERSION = 1


def crop_params(margin):
    """What decides a lung-cropped set's boxes, recorded with the JPEG set (inference reads it
    back from the CNN's record to crop test series the same way)."""
    return {"method": "lung", "lung_hu": list(LUNG_HU), "min_lung_share": MIN_LUNG_SHARE,
            "max_slices": MAX_SLICES, "margin": float(margin), "version": CROP_VERSION}


def slice_lungs(hu):
    """Bounding box ``(x0, y0, x1, y1)`` of the lungs on one HU slice, or None."""
    lo, hi = LUNG_HU
    air = (hu < hi).astype(np.uint8)
    _, lab = cv2.connectedComponents(air, connectivity=8)
    outside = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    lung = (air.astype(bool) & ~np.isin(lab, outside) & (hu >= lo)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(lung, connectivity=8)
    stats = stats[1:]  # row 0 is the background
    stats = stats[stats[:, cv2.CC_STAT_AREA] >= MIN_LUNG_SHARE * hu.size]
    if not len(stats):
        return None
    stats = stats[np.argsort(-stats[:, cv2.CC_STAT_AREA], kind="stable")[:LUNG_COMPONENTS]]
    x0, y0 = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    return (int(x0.min()), int(y0.min()), int((x0 + stats[:, cv2.CC_STAT_WIDTH]).max()),
            int((y0 + stats[:, cv2.CC_STAT_HEIGHT]).max()))


def union(boxes):
    """The bounding box of boxes (None entries skipped), or None."""
    boxes = [b for b in boxes if b is not None]
    if not boxes:
        return None
    b = np.array(boxes)
    return int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max())


def square_box(bounds, shape, margin):
    """The lungs' bounds -> a square box padded by ``margin`` inside an image of ``shape``."""
    x0, y0, x1, y1 = bounds
    rows, cols = shape
    side = int(round(max(x1 - x0, y1 - y0) * (1 + 2 * margin)))
    side = max(1, min(side, rows, cols))
    left, top = (x0 + x1 - side) // 2, (y0 + y1 - side) // 2
    left, top = min(max(left, 0), cols - side), min(max(top, 0), rows - side)
    return left, top, left + side, top + side


def sample(n, k=MAX_SLICES):
    """Indices of up to ``k`` of ``n`` slices, evenly spaced, the first and the last included."""
    return sorted(set(np.linspace(0, n - 1, min(n, k)).round().astype(int).tolist()))


def lung_box(series_dir, margin):
    """The series' square crop box ``(x0, y0, x1, y1)``, or None (full image, logged) when no
    lungs are found."""
    order = read_series_order(series_dir)
    found, shape = [], None
    for k in sample(len(order)):
        hu = to_hu(read_dataset(order[k].path), order[k].path)
        shape = shape or hu.shape
        found.append(slice_lungs(hu) if hu.shape == shape else None)  # one matrix per series
    bounds = union(found)
    if bounds is None:
        log.warning("%s: no lungs found; lung crop falls back to the full image", series_where(series_dir))
        return None
    return square_box(bounds, shape, margin)

