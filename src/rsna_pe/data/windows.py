"""CT windows and the HU -> uint8 mapping. Channel order R, G, B = WINDOWS order."""
import cv2
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


# Every window saturates outside [_HU_LO, _HU_HI], so integer HU are clipped to that span and
# looked up in a small table that stays in cache (one gather per pixel instead of 3 windows).
_HU_LO = min(lv - wd // 2 for lv, wd in WINDOWS.values())
_HU_HI = max(lv + wd // 2 for lv, wd in WINDOWS.values())
_LUTS = {}


def lut(bgr=False):
    """Table over HU _HU_LO.._HU_HI: each uint32 entry packs the 3 windowed bytes (+ 1 spare),
    so a slice is converted with one 4-byte gather per pixel."""
    if bgr not in _LUTS:
        hu = np.arange(_HU_LO, _HU_HI + 1)
        table = np.zeros((len(hu), 4), np.uint8)
        table[:, :3] = np.stack([window(hu, lv, wd) for lv, wd in WINDOWS.values()], axis=-1)
        if bgr:
            table[:, :3] = table[:, 2::-1]
        _LUTS[bgr] = table.view(np.uint32).ravel()
    return _LUTS[bgr]


def hu_to_rgb(hu, bgr=False):
    """HU array (H, W) -> (H, W, 3) uint8, channels RGB (or reversed for OpenCV writers).

    Integer HU (the usual slope 1) take the table; fractional HU (rescaled or resized) take the
    exact formula."""
    if hu.dtype.kind in "iu":
        idx = np.clip(hu, _HU_LO, _HU_HI).astype(np.int32, copy=False)
        idx -= _HU_LO
        packed = lut(bgr)[idx].view(np.uint8).reshape(*hu.shape, 4)
        # OpenCV drops the spare byte faster than a numpy strided copy.
        return cv2.cvtColor(packed, cv2.COLOR_BGRA2BGR)
    out = np.stack([window(hu, lv, wd) for lv, wd in WINDOWS.values()], axis=-1)
    return np.ascontiguousarray(out[..., ::-1]) if bgr else out
