"""Stage 3's data: slices of the stage-1 JPEG set as the CNN's training items (one slice, or
its z-neighbours with ``dataset.input: neighbours``), their labels and the train augmentation
(docs/training.md)."""
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch

from ..core import paths
from ..core.errors import PipelineError
from ..core.labels import IMAGE_LABEL
from .images import jpeg_name, read_jpeg
from .model_input import DEFAULT_INPUT, NEIGHBOURS, neighbour_stack, resize_slice

# Augmentation sizes in the recipe are pixels at this image size; they scale with the size.
REFERENCE_SIZE = 512


def jpeg_path(root, study, series, z, sop):
    """``<root>/<study>/<series>/<zzzz>_<SOP>.jpg`` (docs/layout.md)."""
    return str(paths.series_dir(root, study, series) / jpeg_name(int(z), sop))


def load_slice(path, size):
    """RGB uint8 (size, size, 3): the stage-1 JPEG resized by rsna_pe.data.model_input, the one
    resize that stages 5 and 7 use too."""
    return resize_slice(read_jpeg(path), size)


def load_neighbours(paths, size):
    """RGB uint8 (size, size, 3): the neighbour input of the middle one of three z-consecutive
    stage-1 JPEGs (z-1, z, z+1; an edge slice's own file stands in for its missing neighbour),
    stacked by rsna_pe.data.model_input as stages 5 and 7 stack it, then resized."""
    imgs = np.stack([read_jpeg(p).transpose(2, 0, 1) for p in paths])
    return resize_slice(np.ascontiguousarray(neighbour_stack(imgs)[1].transpose(1, 2, 0)), size)


def neighbour_rows(df):
    """int64 (N, 2): the row positions of each row's previous and next slice in its series
    (by ``z_pos_order``); an edge slice is its own neighbour."""
    n = len(df)
    out = np.zeros((n, 2), np.int64)
    if not n:
        return out
    series = df.groupby(["StudyInstanceUID", "SeriesInstanceUID"], sort=False).ngroup().to_numpy()
    order = np.lexsort((df["z_pos_order"].to_numpy(), series))  # by series, then z
    same = series[order][1:] == series[order][:-1]  # sorted row k and k+1 share a series
    out[order, 0] = np.where(np.r_[False, same], np.r_[order[:1], order[:-1]], order)
    out[order, 1] = np.where(np.r_[same, False], np.r_[order[1:], order[-1:]], order)
    return out


def build_train_transform(acfg, size, record_flips=False):
    """The original's train augmentation (docs/training.md), pixel sizes scaled to ``size``;
    ``record_flips``: each result names the transforms it applied (a flip swaps side targets)."""
    s = size / REFERENCE_SIZE
    px = lambda v: max(1, int(round(v * s)))  # noqa: E731
    ssr, drop = acfg["shift_scale_rotate"], acfg["dropout"]
    shift, scale, rot = ssr["shift"], ssr["scale"], ssr["rotate"]
    lo, hi = (px(v) for v in drop["coarse_size"])
    ulo, uhi = (max(2, px(v)) for v in drop["grid_unit"])
    return A.Compose([
        A.HorizontalFlip(p=acfg["hflip"]),
        # ShiftScaleRotate of albumentations 1.x, written as the Affine it now is; keep_ratio:
        # one scale for x and y, as ShiftScaleRotate drew it.
        A.Affine(translate_percent={"x": (-shift, shift), "y": (-shift, shift)},
                 scale=(1 - scale, 1 + scale), keep_ratio=True, rotate=(-rot, rot), shear=(0, 0),
                 interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_REFLECT_101, p=ssr["p"]),
        A.OneOf([
            A.CoarseDropout(num_holes_range=(drop["coarse_holes"], drop["coarse_holes"]),
                            hole_height_range=(lo, hi), hole_width_range=(lo, hi), fill=0),
            A.GridDropout(ratio=drop["grid_ratio"], unit_size_range=(ulo, min(uhi, size)),
                          random_offset=True, fill=0),
        ], p=drop["p"]),
    ], save_applied_params=record_flips)


class SliceDataset(torch.utils.data.Dataset):
    """One JPEG slice -> (uint8 HWC tensor, float label); with ``neighbours`` (int (N, 2), the
    rows of each slice's z-1 and z+1, see neighbour_rows) its neighbour input instead.

    Images stay uint8 and channel-last until the GPU: a stacked (B,H,W,3) batch permuted to
    (B,3,H,W) is already channels_last in memory, and 4x fewer bytes cross the bus than float.
    The image is resized before augmenting (cheaper when training below the stored size; the
    augmentation's pixel sizes are scaled to the training size).
    """

    def __init__(self, files, labels, size, transform=None, neighbours=None, weights=None,
                 flip_order=None):
        # One numpy array, not a list of str: workers then share it without copy-on-access.
        self.files = np.asarray([str(f).encode() for f in files])
        self.labels = np.asarray(labels, dtype=np.float32)
        self.size = size
        self.transform = transform
        self.neighbours = None if neighbours is None else np.asarray(neighbours, np.int64)
        # Exam targets (rsna_pe.models.exam_targets): labels (N, 1+K), their weights (N, K), and the
        # target order of a flipped image; items are then (image, labels, weights).
        self.weights = weights
        self.flip_order = flip_order

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        if self.neighbours is None:
            img = load_slice(self.files[i].decode(), self.size)
        else:
            prev, nxt = self.neighbours[i]
            img = load_neighbours([self.files[k].decode() for k in (prev, i, nxt)], self.size)
        y = self.labels[i]
        if self.transform is not None:
            out = self.transform(image=img)
            img = out["image"]
            if self.flip_order is not None and any(name == "HorizontalFlip" for name, _ in
                                                   out["applied_transforms"]):
                y = y[self.flip_order]
        img = torch.from_numpy(np.ascontiguousarray(img))
        if self.weights is None:
            return img, torch.tensor(y)
        return img, torch.from_numpy(y.copy()), torch.from_numpy(self.weights[i])

    def worker_init(self, seed):
        """Called in each loader worker: one thread per worker (16 workers x N cv2/torch
        threads would oversubscribe the cores) and a per-worker augmentation stream."""
        cv2.setNumThreads(0)
        torch.set_num_threads(1)
        if self.transform is not None:
            self.transform.set_random_seed(seed % 2**32)


def slice_dataset(df, root, size, transform=None, kind=DEFAULT_INPUT, exam=None):
    """The SliceDataset of the rows of ``df`` (a fold csv's) in the JPEG set ``root``; ``exam``:
    the exam targets of these rows as (targets, weights, flip order), rsna_pe.models.exam_targets."""
    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"JPEG folder not found: {root} (run src/make_image.py first)")
    series = df[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates()
    for st, se in series.itertuples(index=False):
        if not (root / st / se).is_dir():
            raise PipelineError(f"no JPEGs for series {root / st / se}")
    files = [jpeg_path(root, st, se, z, sop) for st, se, z, sop in
             df[["StudyInstanceUID", "SeriesInstanceUID", "z_pos_order", "SOPInstanceUID"]]
             .itertuples(index=False)]
    image = df[IMAGE_LABEL].to_numpy(np.float32)
    neighbours = neighbour_rows(df) if kind == NEIGHBOURS else None
    if exam is None:
        return SliceDataset(files, image, size, transform, neighbours)
    y, w, flip = exam
    return SliceDataset(files, np.column_stack([image, y]), size, transform, neighbours, w, flip)
