"""The head's pooling of the CNN's own logits (model.cnn_logits): what it computes, that a new
pool leaves the head as it was, its errors and its configs."""
import numpy as np
import pytest
import torch

from rsna_pe.core import paths
from rsna_pe.core.config import load_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.models import exam_targets
from rsna_pe.models.head import build_head
from rsna_pe.models.head_options import LogitPool
from rsna_pe.records import provenance
from rsna_pe.train.head_task import HeadTask
from support.heads import DIM, REPO, expected_oof_ids, make_dump, one_thread, tiny_overrides  # noqa: F401

HEAD = {"input_dim": DIM, "hidden": 6, "layers": 3, "dropout": 0.5,
        "transformer": {"width": 8, "layers": 2, "heads": 2, "ff": 16}}


# ----------------------------------------------------------------------------- head

def test_logit_pool_is_max_mean_and_pe_weighted_mean_over_real_slices():
    pool = LogitPool(3).double()
    with torch.no_grad():  # read the 9 pooled features out through the first 9 exam outputs
        pool.linear.weight.copy_(torch.eye(9, dtype=torch.float64))
    emb = torch.randn(2, 4, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    emb[1, 2:] = 1e3  # padding of the second series
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = pool(emb, mask).detach().numpy()
    for i, n in enumerate((4, 2)):
        z = emb[i, :n, -3:].numpy()
        p = 1 / (1 + np.exp(-z[:, 0]))
        want = np.concatenate([z.max(0), z.mean(0), (p[:, None] * z).sum(0) / p.sum()])
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("head", ["lstm", "transformer"])
def test_a_new_pool_leaves_the_head_as_it_was(head):
    torch.manual_seed(0)
    plain = build_head({**HEAD, "head": head}).double().eval()
    pooled = build_head({**HEAD, "head": head, "cnn_logits": 3}).double().eval()
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["logit_pool.linear.bias", "logit_pool.linear.weight"] and not unexpected
    emb = torch.randn(2, 5, DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(plain(emb, torch.tensor([5, 3])), pooled(emb, torch.tensor([5, 3]))):
            torch.testing.assert_close(a, b, atol=0, rtol=0)  # zero-initialised: adds nothing


def test_bad_cnn_logits_is_a_one_line_error():
    with pytest.raises(PipelineError, match="model.cnn_logits 8"):
        build_head({**HEAD, "cnn_logits": DIM})


@pytest.mark.parametrize("root", ["configs", "configs/demo"])
def test_the_variant_config(root):
    cnn = load_config(REPO / root / "train_cnn/rexnet200_combined.yml")
    assert exam_targets.in_embedding(cnn["model"])
    n_logits = 1 + len(exam_targets.target_labels(cnn["model"]))
    cfg = load_config(REPO / root / "train_rnn/rexnet200_combined_pool.yml")
    m = cfg["model"]
    assert cfg["dataset"]["cnn_run"] == "rexnet200_combined" and m["cnn_logits"] == n_logits
    assert m["input_dim"] == 2560 + n_logits and cfg["loss"]["name"] == "metric"
    assert build_head(m).logit_pool.n == n_logits
    HeadTask(cfg)


def test_a_pooling_head_refuses_a_dump_without_that_many_logits(tmp_path):
    csv = make_dump(tmp_path)  # plain features: its record names no logits
    pooled = tmp_path / "pooled.yml"
    pooled.write_text(f"base: {REPO / 'configs/train_rnn/_base.yml'}\nmodel:\n  cnn_logits: 3\n")
    task = HeadTask(load_config(pooled, tiny_overrides(tmp_path, csv)))
    record = provenance.record_path(paths.dump_dir(tmp_path / "dump", "cnn_a", 0))
    with pytest.raises(PipelineError, match=f"{record}: the embeddings end with 0 CNN logits"):
        task.datasets()
    rec = provenance.read_record(record)
    rec["params"]["logits"] = ["pe_present_on_image", "central_pe", "leftsided_pe"]
    provenance.write(record.parent, rec)
    assert len(task.datasets()) == 2  # three logits named: accepted
