"""Activation maps: where in a slice the CNNs find their evidence for PE (Grad-CAM).

Grad-CAM on the backbone's last feature map through Captum's ``LayerGradCam``; Captum was
chosen over the grad-cam package because it needs nothing beyond torch, numpy and matplotlib,
already here, while grad-cam pulls ttach, scipy and Pillow. Each CNN's map is upsampled to the
requested size and stretched to [0, 1] per slice; the ensemble's map is the mean of its CNNs'
maps, stretched again. Slices run in batches, so a long study costs a few backward passes.
An ensemble run by ONNX Runtime (``explains`` false) has no torch models to explain: it gets no
maps, and torch is imported only where maps are made.
"""
import cv2
import numpy as np


def scale01(maps):
    """Each map (N, H, W) stretched to [0, 1] between its own min and max (where in the slice,
    not how much: the probability says that). A flat map becomes 1 if positive (evidence
    everywhere, e.g. a 1x1 feature map), 0 if zero (no positive evidence)."""
    maps = np.asarray(maps, dtype=np.float32)
    flat = maps.reshape(len(maps), -1)
    lo, hi = (flat.min(axis=1), flat.max(axis=1)) if len(maps) else (np.zeros(0), np.zeros(0))
    span = hi - lo
    even = span <= 1e-6 * np.maximum(hi, 1e-30)
    out = (maps - lo[:, None, None]) / np.where(even, 1, span)[:, None, None]
    out[even] = (hi[even] > 0)[:, None, None]
    return out.astype(np.float32)


def grad_cam(net, layer, images, out_size=None, batch=16, device=None):
    """Grad-CAM of output 0 of ``net`` at ``layer`` for images (N, C, H, W) (numpy or tensor,
    any dtype the net takes) -> float32 (N, out, out) in [0, 1] (default: the input's size).
    ``net``: a module, or any function of the images with ``device`` given."""
    # Lazy: captum (about 0.5 s to import) and torch are needed only when maps are made, and
    # stage 7 imports this module on every run, with ONNX Runtime without torch.
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    device = device or next(net.parameters()).device
    images = torch.as_tensor(images)
    size = tuple(images.shape[-2:]) if out_size is None else (int(out_size), int(out_size))
    gc = LayerGradCam(net, layer)
    out = []
    for start in range(0, len(images), batch):
        # Gradients even where the caller runs under inference_mode (clone: a normal tensor).
        with torch.inference_mode(False), torch.enable_grad():
            x = images[start:start + batch].to(device).float().clone().requires_grad_(True)
            a = gc.attribute(x, target=0, relu_attributions=True)
        a = LayerAttribution.interpolate(a.detach().float(), size, interpolate_mode="bilinear")
        out.append(a[:, 0].clamp(min=0).cpu().numpy())
    return scale01(np.concatenate(out)) if out else np.zeros((0, *size), np.float32)


def cnn_cam(cnn, images, out_size=None, batch=16):
    """Grad-CAM of one ``RSNACNN`` (uint8 RGB 0-255 input, as it was trained): its own forward's
    image logit, explained at its ``feature_map`` (the backbone's last feature map)."""
    cnn.eval()
    return grad_cam(lambda x: cnn(x)[:, None], cnn.feature_map, images, out_size, batch,
                    device=next(cnn.parameters()).device)


def pick_slices(img_prob, top_k=8, all_slices=False):
    """The slices to explain: all, or the ``top_k`` most probable, in z order."""
    n = len(img_prob)
    if all_slices:
        return np.arange(n)
    k = max(0, min(int(top_k), n))
    return np.sort(np.argsort(-np.asarray(img_prob), kind="stable")[:k])


def placed(maps, region, out_size):
    """Maps of a lung-cropped CNN's input put where its box lies on the whole slice (``region``:
    the box as shares of the slice, (x0, y0, x1, y1); None: the maps cover the whole slice)."""
    if region is None:
        return maps
    x0, y0, x1, y1 = (int(round(v * out_size)) for v in region)
    out = np.zeros((len(maps), out_size, out_size), np.float32)
    for k, m in enumerate(maps):
        out[k, y0:y1, x0:x1] = cv2.resize(m, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
    return out


def ensemble_cam(ens, images, indices, out_size, batch=16, regions=None):
    """The mean Grad-CAM of an ``Ensemble``'s CNNs for slices ``indices`` of ``images``
    ({model input spec: uint8 (S, 3, H, W)}, as ``ens.read`` gives) -> float32 (len(indices), out, out),
    on the whole slice (``regions``: ``ens.crop_regions`` of the series, for lung-cropped CNNs).
    An ensemble without torch models (``ens.explains`` false, ONNX Runtime) gives no maps: an
    empty array (0, out, out)."""
    indices = np.asarray(indices, dtype=np.int64)
    if not getattr(ens, "explains", True):
        return np.zeros((0, out_size, out_size), np.float32)
    total = np.zeros((len(indices), out_size, out_size), np.float32)
    if not len(indices):
        return total
    for spec, embedder, _ in ens.members:
        maps = cnn_cam(embedder.model, images[spec][indices], out_size, batch)
        total += placed(maps, (regions or {}).get(spec), out_size)
    return scale01(total / len(ens.members))

