"""The one way a windowed slice becomes the pixels a CNN sees, in training, dump and inference.

Stage 1 windows each slice at the JPEG size (``rsna_pe.dicom.hu_to_image``) and stores it as a
JPEG; training (stage 3) decodes those files and the dump (stage 5) the same bytes from the npz.
Inference (stage 7) windows the test DICOM at the checkpoint's JPEG size and passes each slice
through the same JPEG encoder and decoder in memory, with the JPEG set's own quality, so it
sees exactly the pixels training saw. All three then resize to the network size here.
"""
import cv2
import numpy as np

from .images import decode_jpeg_bytes, jpeg_params

# One interpolation for every stage (the original's albumentations Resize used linear).
INTERPOLATION = cv2.INTER_LINEAR


def resize_slice(img, size):
    """RGB uint8 (H, W, 3) -> (size, size, 3); returned as is when already that size."""
    if img.shape[0] == size and img.shape[1] == size:
        return img
    return cv2.resize(img, (size, size), interpolation=INTERPOLATION)


def resize_stack(imgs, size):
    """uint8 (S, 3, H, W) -> (S, 3, size, size), slice by slice with ``resize_slice``."""
    if imgs.shape[-1] == size and imgs.shape[-2] == size:
        return imgs
    return np.stack([resize_slice(im.transpose(1, 2, 0), size) for im in imgs]).transpose(0, 3, 1, 2)


def jpeg_roundtrip(img, quality):
    """RGB uint8 (H, W, 3) -> the pixels stage 1's JPEG file of it decodes to (same encoder,
    same settings, same decoder)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), jpeg_params(quality))
    if not ok:
        raise ValueError("JPEG encoding failed")
    return decode_jpeg_bytes(buf, "in-memory JPEG")


def from_windows(imgs, quality, size):
    """Windowed slices at the JPEG size, uint8 (S, 3, J, J), -> model input (S, 3, size, size)
    as training saw them: through the JPEG set's codec, then resized. ``quality=None`` skips
    the codec (only to measure what it changes)."""
    out = []
    for im in imgs:
        im = np.ascontiguousarray(im.transpose(1, 2, 0))
        out.append(resize_slice(im if quality is None else jpeg_roundtrip(im, quality), size))
    return np.stack(out).transpose(0, 3, 1, 2) if out else np.zeros((0, 3, size, size), np.uint8)
