"""The one way a windowed slice becomes the pixels a CNN sees, in training, dump and inference.

Stage 1 windows each slice at the JPEG size (``rsna_pe.data.dicom.hu_to_image``) and stores it as a
JPEG; training (stage 3) decodes those files and the dump (stage 5) the same bytes from the npz.
Inference (stage 7) windows the test DICOM at the checkpoint's JPEG size and passes each slice
through the same JPEG encoder and decoder in memory, with the JPEG set's own quality, so it
sees exactly the pixels training saw. All three then make the model's input from the
decoded slices and resize it to the network size here.

The CNN's input kind (``dataset.input`` of its config, saved in its checkpoint): ``windows``
(the recipe: the lung, PE and mediastinal windows of one slice as R, G, B) or ``neighbours``
(the PE window of slices z-1, z, z+1 as R, G, B), stacked by ``neighbour_stack`` from those
same decoded slices in every stage.
"""
import cv2
import numpy as np

from ..core.errors import PipelineError
from .images import decode_jpeg_bytes, jpeg_params
from .windows import WINDOWS

INPUTS = ("windows", "neighbours")
DEFAULT_INPUT, NEIGHBOURS = INPUTS
_PE = list(WINDOWS).index("pe")  # the G channel

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
    if not len(imgs):
        return np.zeros((0, imgs.shape[1], size, size), imgs.dtype)
    return np.stack([resize_slice(im.transpose(1, 2, 0), size) for im in imgs]).transpose(0, 3, 1, 2)


def jpeg_roundtrip(img, quality):
    """RGB uint8 (H, W, 3) -> the pixels stage 1's JPEG file of it decodes to (same encoder,
    same settings, same decoder)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), jpeg_params(quality))
    if not ok:
        raise ValueError("JPEG encoding failed")
    return decode_jpeg_bytes(buf, "in-memory JPEG")


def through_codec(imgs, quality):
    """Windowed slices at the JPEG size, uint8 (S, 3, J, J), -> what stage 1's JPEG files of
    them decode to. ``quality=None`` skips the codec (only to measure what it changes)."""
    if quality is None:
        return imgs
    out = [jpeg_roundtrip(np.ascontiguousarray(im.transpose(1, 2, 0)), quality) for im in imgs]
    return np.stack(out).transpose(0, 3, 1, 2) if out else imgs


def input_kind(cfg):
    """A CNN's input kind from its config; one saved before the option existed is ``windows``."""
    kind = cfg.get("dataset", {}).get("input") or DEFAULT_INPUT
    if kind not in INPUTS:
        raise PipelineError(f"unknown dataset.input '{kind}' (choose from {', '.join(INPUTS)})")
    return kind


def input_channels(kind):
    """What R, G, B hold for an input kind."""
    return list(WINDOWS) if kind == DEFAULT_INPUT else ["pe z-1", "pe z", "pe z+1"]


def neighbour_stack(imgs):
    """Decoded slices of one series in z order, uint8 (S, 3, H, W) -> (S, 3, H, W): the PE
    window (G) of slices z-1, z, z+1 as R, G, B; an edge slice stands in for its missing
    neighbour."""
    g = imgs[:, _PE]
    k = np.arange(len(g))
    return np.stack([g[np.maximum(k - 1, 0)], g, g[np.minimum(k + 1, len(g) - 1)]], axis=1)


def model_input(imgs, kind, size):
    """Decoded slices of one series in z order, uint8 (S, 3, J, J), -> the CNN's input of
    ``kind`` at its size (S, 3, size, size)."""
    return resize_stack(neighbour_stack(imgs) if kind == NEIGHBOURS else imgs, size)
