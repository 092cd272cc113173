"""The GPU path checked on a CPU: fixed-size chunks with padding, series sharing one pass, and
when ``compile: auto`` compiles. The same features whatever the chunking (float tolerance)."""
import numpy as np
import pytest
import torch

from rsna_pe.core.errors import PipelineError
from rsna_pe.core.runtime import resolve_compile
from rsna_pe.infer.embed import GROUP_CHUNKS, Embedder
from rsna_pe.models.cnn import build_cnn

MODEL = dict(backbone="rexnet_200", pretrained=False, pool="gem", gem_p=3.0, gem_eps=1e-6, dropout=0.5, hidden=256)
CPU = torch.device("cpu")
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return build_cnn(MODEL).eval()


def _stack(n, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, 3, size, size), dtype=np.uint8)


def test_resolve_compile():
    assert resolve_compile("auto", "cuda") and not resolve_compile("auto", "cpu")
    assert resolve_compile("auto", "cuda", 20000, 20000) and not resolve_compile("auto", "cuda", 19999, 20000)
    assert not resolve_compile("auto", "cpu", 10 ** 9, 20000)
    for value in (True, "true", "True"):
        assert resolve_compile(value, "cpu") and resolve_compile(value, "cuda", 1, 20000)
    for value in (False, "false"):
        assert not resolve_compile(value, "cuda") and not resolve_compile(value, "cuda", 10 ** 9, 1)
    with pytest.raises(PipelineError, match="compile=yes"):
        resolve_compile("yes", "cuda")


def test_padding_is_off_on_cpu_by_default(model):
    emb = Embedder(model, CPU, chunk=4, amp=False)
    assert not emb.pad and emb.group == 0
    assert Embedder(model, CPU, chunk=4, amp=False, pad=True).group == GROUP_CHUNKS * 4


@pytest.mark.parametrize("tta", [False, True])
def test_chunking_and_padding_change_nothing(model, tta):
    """7 slices: chunks of 1 (the reference), 4 (3 of padding in the last one) and 16 (longer
    than the study), each with and without padding."""
    x = _stack(7, 0)
    ref = Embedder(model, CPU, chunk=1, amp=False, tta_flip=tta).run(x)
    assert ref.shape == (7, model.num_features) and ref.dtype == np.float32
    for chunk in (4, 16):
        for pad in (False, True):
            got = Embedder(model, CPU, chunk=chunk, amp=False, pad=pad, tta_flip=tta).run(x)
            np.testing.assert_allclose(got, ref, **TOL, err_msg=f"chunk {chunk} pad {pad}")


def test_padding_never_leaks(model):
    """The padded chunk's extra rows are dropped, and what they hold does not reach real rows."""
    x = _stack(5, 1)
    emb = Embedder(model, CPU, chunk=4, amp=False, pad=True)
    seen = []
    features = emb.features
    emb.features = lambda t: seen.append(len(t)) or features(t)
    got = emb.run(x)
    assert seen == [4, 4] and got.shape == (5, model.num_features)
    np.testing.assert_allclose(got, Embedder(model, CPU, chunk=1, amp=False).run(x), **TOL)
    # The real slice in the padded chunk is the same next to other slices.
    np.testing.assert_allclose(got[4], Embedder(model, CPU, chunk=1, amp=False).run(x[4:])[0], **TOL)


def test_series_sharing_one_pass_get_their_own_features(model):
    stacks = [_stack(n, 10 + n) for n in (3, 5, 2)]
    emb = Embedder(model, CPU, chunk=4, amp=False, pad=True)
    together = emb.run_many(stacks)
    on_device = emb.embed_many(stacks)
    for s, a, b in zip(stacks, together, on_device):
        ref = Embedder(model, CPU, chunk=1, amp=False).run(s)
        np.testing.assert_allclose(a, ref, **TOL)
        assert isinstance(b, torch.Tensor) and b.device == CPU
        np.testing.assert_allclose(b.numpy(), ref, **TOL)


def test_dump_saves_each_series_of_a_shared_pass(model, tmp_path):
    """Stage 5's loop with padded chunks and series sharing passes (GPU behaviour, forced on a
    CPU): every series' file holds its own embeddings; a series that failed to load is skipped."""
    import dump_embeddings

    emb = Embedder(model, CPU, chunk=2, amp=False, pad=True)
    emb.group = 6  # a pass every 6 slices or more: passes of several series, and a last short one
    stacks = {f"s{i}": _stack(n, 20 + i) for i, n in enumerate((3, 1, 4, 2, 5))}
    items = [(tmp_path / f"{k}.npz", x, np.full((len(x), 10), i, np.float32), np.arange(len(x)).astype(str), None)
             for i, (k, x) in enumerate(stacks.items())]
    items.insert(2, (tmp_path / "bad.npz", None, None, None, "bad.npz: unreadable"))
    assert dump_embeddings._embed_all(emb, items) == ["bad.npz: unreadable"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{k}.npz" for k in stacks]
    for i, (k, x) in enumerate(stacks.items()):
        with np.load(tmp_path / f"{k}.npz") as z:
            np.testing.assert_allclose(z["embeddings"], Embedder(model, CPU, chunk=1, amp=False).run(x), **TOL)
            assert (z["labels"] == i).all() and list(z["sop"]) == [str(j) for j in range(len(x))]
