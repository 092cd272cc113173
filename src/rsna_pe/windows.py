"""CT windows and the HU -> uint8 mapping. Channel order R, G, B = WINDOWS order."""
import numpy as np

# name: (level, width). Order is the channel order of every 3-channel image (RGB).
WINDOWS = {
    "lung": (-600, 1500),
    "pe": (100, 700),
    "mediastinal": (40, 400),
}


def window(hu, level, width):
    """round(255 * (clip(HU, L-W/2, L+W/2) - (L-W/2)) / W) as uint8 (reference formula)."""
    lo = level - width / 2
    x = np.clip(np.asarray(hu, dtype=np.float32), lo, lo + width)
    return np.rint(255.0 * (x - lo) / width).astype(np.uint8)


# Stored CT values are int16 before rescale; HU are clipped to this range before the lookup.
_HU_MIN, _HU_MAX = -32768, 32767


def _build_lut():
    hu = np.arange(_HU_MIN, _HU_MAX + 1, dtype=np.float64)
    return np.stack([window(hu, lv, wd) for lv, wd in WINDOWS.values()], axis=-1)


_LUT = None


def lut():
    """(65536, 3) uint8 table: row HU - _HU_MIN holds the three windowed values."""
    global _LUT
    if _LUT is None:
        _LUT = _build_lut()
    return _LUT


def hu_to_rgb(hu):
    """HU array (H, W) -> (H, W, 3) uint8 RGB. Integer HU (the usual slope 1) take one table
    lookup; fractional HU (rescaled or resized) take the exact formula."""
    if hu.dtype.kind in "iu":
        return lut()[np.clip(hu, _HU_MIN, _HU_MAX).astype(np.int32) - _HU_MIN]
    return np.stack([window(hu, lv, wd) for lv, wd in WINDOWS.values()], axis=-1)
