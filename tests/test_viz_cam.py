"""Activation maps (rsna_pe.viz.cam): Grad-CAM finds what drives a logit; shapes, ranges, batching."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from rsna_pe.models.cnn import build_cnn
from rsna_pe.viz.cam import cnn_cam, grad_cam, pick_slices, scale01


class RegionModel(nn.Module):
    """Logit = mean of channel 0 of a feature map over a fixed region (rows 4-11, cols 20-27);
    the feature map is the input itself (a 1x1 identity convolution)."""

    ROWS, COLS = slice(4, 12), slice(20, 28)

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(3)[:, :, None, None])

    def forward(self, x):
        return self.features(x)[:, 0, self.ROWS, self.COLS].mean(dim=(1, 2))[:, None]


def _blobs(n=5, size=32, seed=0):
    """Images with a bright blob inside the region in channel 0, at a random place, and a
    brighter decoy outside it in channel 1 (which the logit ignores)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 5, (n, 3, size, size)).astype(np.float32)
    where = []
    for i in range(n):
        r, c = rng.integers(4, 10), rng.integers(20, 26)
        x[i, 0, r:r + 2, c:c + 2] += 200
        x[i, 1, 24:30, 2:8] += 255
        where.append((r, c))
    return x, where


def test_grad_cam_peaks_where_the_blob_drives_the_logit():
    net = RegionModel().eval()
    x, _ = _blobs()
    maps = grad_cam(net, net.features, x, batch=2)  # batches of 2: also the last, odd one
    assert maps.shape == (5, 32, 32) and maps.dtype == np.float32
    assert np.allclose(maps.min(axis=(1, 2)), 0) and np.allclose(maps.max(axis=(1, 2)), 1)
    for m in maps:
        r, c = np.unravel_index(np.argmax(m), m.shape)
        assert RegionModel.ROWS.start <= r < RegionModel.ROWS.stop
        assert RegionModel.COLS.start <= c < RegionModel.COLS.stop
        assert m[24:30, 2:8].max() < 0.1  # the decoy in an ignored channel gets no credit


def test_grad_cam_upsamples_to_the_asked_size_and_ignores_inference_mode():
    net = RegionModel().eval()
    x, _ = _blobs(n=3)
    with torch.inference_mode():
        maps = grad_cam(net, net.features, torch.from_numpy(x), out_size=64)
    assert maps.shape == (3, 64, 64)
    r, c = np.unravel_index(np.argmax(maps[0]), (64, 64))
    assert 8 <= r < 24 and 40 <= c < 56


@pytest.fixture(scope="module")
def cnn():
    torch.manual_seed(0)
    return build_cnn({"backbone": "rexnet_200", "pretrained": False}).eval()


def test_the_cnns_feature_map_is_the_backbones_in_its_own_forward(cnn):
    """cnn_cam hooks ``feature_map`` in the CNN's own forward: it must see the backbone's feature
    map, and carry no weights (checkpoints keep their keys)."""
    x = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    seen = []
    hook = cnn.feature_map.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    with torch.no_grad():
        cnn(x)
        want = cnn.backbone.forward_features((x.float() - cnn.mean) / cnn.std)
    hook.remove()
    assert len(seen) == 1 and torch.equal(seen[0], want)
    assert not any(k.startswith("feature_map") for k in cnn.state_dict())


def test_cnn_cam_shapes_range_and_batching(cnn):
    x = np.random.default_rng(1).integers(0, 256, (5, 3, 64, 64), dtype=np.uint8)
    a = cnn_cam(cnn, x, out_size=48, batch=2)
    b = cnn_cam(cnn, x, out_size=48, batch=5)
    assert a.shape == (5, 48, 48) and a.min() >= 0 and a.max() <= 1 + 1e-6
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not any(p.grad is not None for p in cnn.parameters())  # no gradients left behind


def test_pick_slices_and_scale01():
    p = np.array([0.1, 0.9, 0.3, 0.8, 0.2])
    assert pick_slices(p, 2).tolist() == [1, 3]  # top 2, in z order
    assert pick_slices(p, 0).tolist() == []
    assert pick_slices(p, 99).tolist() == [0, 1, 2, 3, 4]
    assert pick_slices(p, 1, all_slices=True).tolist() == [0, 1, 2, 3, 4]
    m = scale01(np.stack([np.zeros((2, 2)), np.full((2, 2), 4.0), [[1.0, 2.0], [3.0, 5.0]]]))
    assert np.array_equal(m[0], np.zeros((2, 2))) and np.array_equal(m[1], np.ones((2, 2)))
    np.testing.assert_allclose(m[2], [[0, 0.25], [0.5, 1]])
