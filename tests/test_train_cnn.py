"""Stage 3: the CNN, its losses, the training engine (checkpoints, resume, DDP), the CLI.

Everything runs on CPU at 32 px with a handful of steps; rexnet_200 is built without
pretrained weights (there is no network here).
"""
import logging
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import train_rsna
from rsna_pe.core import paths
from rsna_pe.core.config import CONFIG_DIR, REPO_ROOT, load_config
from rsna_pe.core.errors import PipelineError
from rsna_pe.data.folds import split_by_fold
from rsna_pe.data.slice_data import build_train_transform
from rsna_pe.models.cnn import GeM, build_cnn, load_backbone_file
from rsna_pe.models.losses import FocalLoss, build_loss
from rsna_pe.train.checkpoint import find_checkpoint, load_trained
from rsna_pe.train.cnn_task import CNNTask
from rsna_pe.train.engine import Trainer
from rsna_pe.train.optim import build_optimizer, build_scheduler
from support.cnn_data import DEMO_CFG, SIZE, overrides, run_main, write_data
from support.workspace import SUB_ENV


@pytest.fixture(scope="module", autouse=True)
def _one_thread(one_thread):
    """One OpenMP thread (conftest's one_thread): fast and repeatable here."""
    yield


@pytest.fixture(scope="module")
def data(module_dir):
    return write_data(module_dir / "data")


@pytest.fixture(scope="module")
def finished_run(data, module_dir):
    """One uninterrupted run: 2 epochs x 2 steps, validating twice per epoch."""
    out = module_dir / "out"
    out.mkdir()
    run_main(["-c", str(DEMO_CFG), *overrides(data, out)])
    return out, paths.run_dir(out, "rexnet200_bce", 0)


def tiny_cfg(**model):
    return {"backbone": "rexnet_200", "pretrained": False, "pretrained_file": "", "pool": "gem",
            "gem_p": 3.0, "gem_eps": 1e-6, "dropout": 0.5, "hidden": 256, **model}


# ----------------------------------------------------------------------------- formulas
def test_focal_loss_matches_hand_computed_value():
    x, y = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 0.0])
    bce = [math.log(2), math.log(1 + math.e ** 2)]
    want = sum(0.25 * (1 - math.exp(-b)) ** 2 * b for b in bce) / 2
    got = FocalLoss(alpha=0.25, gamma=2.0)(x, y)
    assert got.item() == pytest.approx(want, rel=1e-6)
    # alpha scales the loss; torchvision's alpha weights positives against negatives instead
    from torchvision.ops import sigmoid_focal_loss
    assert sigmoid_focal_loss(x, y, alpha=0.25, reduction="mean").item() != pytest.approx(want, rel=1e-3)
    assert build_loss({"name": "focal", "params": {"alpha": 0.25}})(x, y).item() == pytest.approx(want)
    with pytest.raises(PipelineError, match="loss.name"):
        build_loss({"name": "dice"})


def test_gem_matches_formula_and_p_learns():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    gem = GeM(p=3.0, eps=1e-6)
    assert gem(x).item() == pytest.approx((100 / 4) ** (1 / 3), rel=1e-6)
    # non-positive activations are clamped to eps before the power
    z = torch.tensor([-1.0, 0.0, 0.0, 8.0]).view(1, 1, 2, 2)
    assert gem(z).item() == pytest.approx(((512 + 3e-18) / 4) ** (1 / 3), rel=1e-6)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs().item() > 0


def test_cosine_schedule_gives_recipe_lrs():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer({"name": "AdamW", "params": {"lr": 1.0e-3, "weight_decay": 1.0e-2}}, p)
    sch = build_scheduler({"name": "cosine", "params": {"eta_min": 1.0e-4}}, opt, 3)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    assert lrs == pytest.approx([1e-3, 7.75e-4, 3.25e-4])
    assert type(build_optimizer({"name": "adamw"}, p)).__name__ == "AdamW"
    with pytest.raises(PipelineError, match="optimizer.name"):
        build_optimizer({"name": "Adamm"}, p)


def test_recipe_configs():
    bce = load_config(CONFIG_DIR / "train_cnn" / "rexnet200_bce.yml")
    focal = load_config(CONFIG_DIR / "train_cnn" / "rexnet200_focal.yml")
    assert (bce["run_name"], focal["run_name"]) == ("rexnet200_bce", "rexnet200_focal")
    assert focal["loss"] == {"name": "focal", "params": {"alpha": 1.0, "gamma": 2.0}}
    assert bce["seeds"] == [42, 84, 126] and bce["train"]["epochs"] == 3
    assert bce["optimizer"]["params"] == {"lr": 1e-3, "weight_decay": 1e-2}
    assert bce["scheduler"]["params"]["eta_min"] == 1e-4 and bce["model"]["pretrained"] is True
    assert paths.fold_csv(bce["dataset"]["data_dir"], bce["jpeg_size"]) == \
        Path("data/fold/ver1/train-jpegs-512/train.csv")
    demo = load_config(CONFIG_DIR / "demo" / "train_cnn" / "rexnet200_focal.yml")
    assert demo["jpeg_size"] == 64 and demo["dataset"]["size"] is None  # = jpeg_size
    assert demo["model"]["pretrained"] is False
    assert demo["loss"]["name"] == "focal" and demo["output_dir"] == "output/train_cnn"


# ----------------------------------------------------------------------------- model + data
def test_model_normalises_inside_and_features_are_the_embedding():
    torch.manual_seed(0)
    m = build_cnn(tiny_cfg()).eval()
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        out, out_f = m(x), m(x.float())
        feats = m.features(x)
        manual = m.head(m.pool(m.backbone.forward_features(
            (x.float() / 255 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
            / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)))).squeeze(-1)
    assert out.shape == (2,) and feats.shape == (2, 2560)
    assert torch.allclose(out, out_f) and torch.allclose(out, manual, atol=1e-5)


def test_a_few_steps_lower_the_loss_on_a_tiny_batch():
    torch.manual_seed(0)
    cfg = {"network": "cnn", "loss": {"name": "bce"}, "train": {"channels_last": True}, "model": tiny_cfg(dropout=0.0)}
    task = CNNTask(cfg)
    model = task.build_model().to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (8, SIZE, SIZE, 3), dtype=torch.uint8)  # NHWC as the loader gives
    batch = (x, torch.tensor([0, 1] * 4, dtype=torch.float32))
    losses = []
    for _ in range(6):
        loss, out = task.step(model, batch, torch.device("cpu"))
        assert out == {}  # training steps hand back nothing (no device sync)
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < 0.8 * losses[0], losses


def test_fold_split_and_datasets(data):
    df = pd.read_csv(paths.fold_csv(data, SIZE))
    for fold in range(3):
        train, val = split_by_fold(df, fold, 3)
        assert sorted(val["fold"].unique()) == list(range(5 * fold, 5 * fold + 5))
        assert not set(train["fold"]) & set(val["fold"])
    cfg = load_config(DEMO_CFG, overrides(data, "unused", **{"dataset.fold": 2, "augment.enabled": True}))
    train_ds, val_ds = CNNTask(cfg).datasets()
    assert (len(train_ds), len(val_ds)) == (20, 10)
    img, label = train_ds[0]
    assert img.dtype == torch.uint8 and img.shape == (SIZE, SIZE, 3) and label.dtype == torch.float32
    # val images are the JPEG as decoded, RGB order
    want = cv2.cvtColor(cv2.imread(val_ds.files[0].decode()), cv2.COLOR_BGR2RGB)
    assert np.array_equal(val_ds[0][0].numpy(), want)


def test_shift_scale_rotate_scales_x_and_y_together():
    # One scale draw for both axes (keep_ratio), as the original ShiftScaleRotate: a centred
    # square stays a square, of a size that varies between draws.
    cfg = load_config(CONFIG_DIR / "train_cnn" / "_base.yml")["augment"]
    cfg.update(hflip=0.0, shift_scale_rotate={"p": 1.0, "shift": 0.0, "scale": 0.2, "rotate": 0})
    cfg["dropout"]["p"] = 0.0
    t = build_train_transform(cfg, 64)
    t.set_random_seed(0)
    img = np.zeros((64, 64, 3), np.uint8)
    img[24:40, 24:40] = 255
    sides = []
    for _ in range(12):
        bright = t(image=img)["image"][..., 0] > 127
        sides.append((int(bright[:, 32].sum()), int(bright[32, :].sum())))
    assert all(abs(h - w) <= 1 for h, w in sides), sides
    assert len({h for h, _ in sides}) > 2


@pytest.mark.parametrize("size", [32, 64])
def test_train_augmentation_keeps_shape_and_changes_pixels(size):
    cfg = load_config(CONFIG_DIR / "train_cnn" / "_base.yml")["augment"]
    t = build_train_transform(cfg, size)
    t.set_random_seed(0)
    img = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    outs = [t(image=img)["image"] for _ in range(8)]
    assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o, img) for o in outs) >= 4


# ----------------------------------------------------------------------------- runs
def test_run_folder_checkpoints_and_metrics(finished_run):
    out, run = finished_run
    rows = pd.read_csv(run / "metrics.csv")
    # 2 epochs x 2 validations, at steps 1, 2 (epoch 0) and 3, 4 (epoch 1)
    assert list(rows["epoch"]) == [0, 0, 1, 1] and list(rows["step"]) == [1, 2, 3, 4]
    assert list(rows["lr"]) == pytest.approx([1e-3, 1e-3, 5.5e-4, 5.5e-4])
    assert {"train_loss", "val_loss", "val_acc", "val_auc"} <= set(rows.columns)
    top = sorted(run.glob("epoch*.ckpt"))
    assert len(top) == 3 and (run / "config.yaml").is_file()
    kept = sorted(rows["val_loss"])[:3]
    for path in [*top, run / "best.ckpt", run / "last.ckpt"]:
        ck = torch.load(path, weights_only=True)  # plain types + tensors only
        assert ck["config"]["run_name"] == "rexnet200_bce"
    assert sorted(torch.load(p, weights_only=True)["metrics"]["val_loss"] for p in top) == \
        pytest.approx(kept)
    best = torch.load(run / "best.ckpt", weights_only=True)
    assert best["metrics"]["val_loss"] == pytest.approx(rows["val_loss"].min())
    last = torch.load(run / "last.ckpt", weights_only=True)
    assert last["finished"]
    # validation gathered both ranks' shards: best.ckpt re-scored on the whole val set alone
    model, ckpt = load_trained(run / "best.ckpt")
    task = CNNTask(ckpt["config"])
    _, val_ds = task.datasets()
    batch = [torch.stack(t) for t in zip(*(val_ds[i] for i in range(len(val_ds))))]
    with torch.no_grad():
        _, o = task.step(model, batch, torch.device("cpu"))
    best = torch.load(run / "best.ckpt", weights_only=True)["metrics"]
    assert task.val_metrics([o])["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4) and last["step"] == 4 and "optimizer" in last


def test_load_trained_rebuilds_from_the_checkpoint_alone(finished_run):
    out, run = finished_run
    path = find_checkpoint(out, "rexnet200_bce", 0)
    assert path == run / "best.ckpt"
    model, ckpt = load_trained(path)
    assert not model.training and ckpt["config"]["dataset"]["size"] == SIZE
    ref = build_cnn(tiny_cfg())
    ref.load_state_dict(torch.load(path, weights_only=True)["model"])
    x = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(x), ref.eval()(x))
    with pytest.raises(PipelineError, match="no checkpoint"):
        find_checkpoint(out, "rexnet200_bce", 1)


def test_finished_run_rerun_does_nothing(finished_run, data, caplog):
    out, run = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with caplog.at_level(logging.INFO):
        run_main(["-c", str(DEMO_CFG), *overrides(data, out)])
    assert "already finished" in caplog.text
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_resume_continues_at_the_saved_step(finished_run, data, tmp_path, monkeypatch, caplog):
    """Stop after the 3rd validation (mid epoch 1), rerun: same rows, same final weights as
    the uninterrupted run (augmentation off, so the data order is the only randomness)."""
    _, ref_run = finished_run
    calls = {"n": 0}
    orig = Trainer._validate_and_save

    def stop_after_third(self, *a, **k):
        orig(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_validate_and_save", stop_after_third)
    argv = ["-c", str(DEMO_CFG), *overrides(data, tmp_path)]
    with pytest.raises(KeyboardInterrupt):
        train_rsna.main(argv)
    run = paths.run_dir(tmp_path, "rexnet200_bce", 0)
    saved = torch.load(run / "last.ckpt", weights_only=True)
    assert (saved["step"], saved["next_epoch"], saved["next_batch"]) == (3, 1, 1)
    assert not saved["finished"]
    monkeypatch.setattr(Trainer, "_validate_and_save", orig)
    with caplog.at_level(logging.INFO):
        run_main(argv)
    assert "resuming" in caplog.text and "step 3, lr 0.00055" in caplog.text
    rows, ref_rows = pd.read_csv(run / "metrics.csv"), pd.read_csv(ref_run / "metrics.csv")
    assert list(rows["step"]) == [1, 2, 3, 4]
    assert np.allclose(rows["val_loss"], ref_rows["val_loss"], rtol=1e-5)
    assert rows["lr"].iloc[-1] == pytest.approx(5.5e-4)
    got = torch.load(run / "last.ckpt", weights_only=True)["model"]
    want = torch.load(ref_run / "last.ckpt", weights_only=True)["model"]
    assert all(torch.allclose(got[k].float(), want[k].float(), atol=1e-6) for k in want)


def test_ddp_two_cpu_processes(data, tmp_path):
    """torchrun, 2 gloo ranks: identical weights on both ranks, one set of run files."""
    script = tmp_path / "ddp_run.py"
    script.write_text(
        "import sys, torch\n"
        "from rsna_pe.core import runtime\n"
        "from rsna_pe.core.config import load_config\n"
        "from rsna_pe.train.engine import Trainer\n"
        "finish = Trainer._finish\n"
        "def save_then_finish(self):  # before rank 0 swaps in the best weights\n"
        "    torch.save({k: v.detach() for k, v in self.model.named_parameters()},\n"
        "               f'{sys.argv[2]}/rank{self.dist.rank}.pt')\n"
        "    finish(self)\n"
        "Trainer._finish = save_then_finish\n"
        "cfg = load_config(sys.argv[1], sys.argv[3:])\n"
        "d = runtime.init('cpu')\n"
        "Trainer(cfg, d).fit()\n"
        "runtime.cleanup()\n")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script),
           str(DEMO_CFG), str(tmp_path), *overrides(data, out, **{"train.epochs": 1})]
    r = subprocess.run(cmd, env=SUB_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    run = paths.run_dir(out, "rexnet200_bce", 0)
    last = torch.load(run / "last.ckpt", weights_only=True)
    assert all(torch.equal(w0[k], last["model"][k]) for k in w0)
    rows = pd.read_csv(run / "metrics.csv")
    assert list(rows["step"]) == [1, 2]  # one writer: no duplicate rows
    assert sorted(p.name for p in run.iterdir()) == [
        "best.ckpt", "config.yaml", "epoch00-step0000001.ckpt", "epoch00-step0000002.ckpt",
        "last.ckpt", "metrics.csv", "record.json"]
    assert last["finished"]
    # validation gathered both ranks' shards: best.ckpt re-scored on the whole val set alone
    model, ckpt = load_trained(run / "best.ckpt")
    task = CNNTask(ckpt["config"])
    _, val_ds = task.datasets()
    batch = [torch.stack(t) for t in zip(*(val_ds[i] for i in range(len(val_ds))))]
    with torch.no_grad():
        _, o = task.step(model, batch, torch.device("cpu"))
    best = torch.load(run / "best.ckpt", weights_only=True)["metrics"]
    assert task.val_metrics([o])["val_loss"] == pytest.approx(best["val_loss"], rel=1e-4)


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- pretrained
def test_pretrained_file_loads_backbone_weights(tmp_path, finished_run):
    import timm
    torch.manual_seed(123)
    src = timm.create_model("rexnet_200", pretrained=False)  # with its ImageNet classifier
    torch.save(src.state_dict(), tmp_path / "rexnet_200.pth")
    m = build_cnn(tiny_cfg(pretrained=True, pretrained_file=str(tmp_path / "rexnet_200.pth")))
    got = m.backbone.state_dict()
    assert all(torch.equal(got[k], src.state_dict()[k]) for k in got)
    # one of our checkpoints works too: its backbone.* weights
    _, run = finished_run
    m2 = build_cnn(tiny_cfg(pretrained_file=str(run / "best.ckpt")))
    ck = torch.load(run / "best.ckpt", weights_only=True)["model"]
    assert all(torch.equal(v, ck[f"backbone.{k}"]) for k, v in m2.backbone.state_dict().items())
    # a file for another network is refused with its name
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(PipelineError, match="other.pth"):
        load_backbone_file(m.backbone, tmp_path / "other.pth")


def test_pretrained_without_network_is_one_line_error(tmp_path, data):
    env = dict(SUB_ENV, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
               TORCH_HOME=str(tmp_path / "torch"))
    cmd = [sys.executable, str(REPO_ROOT / "src" / "train_rsna.py"), "-c", str(DEMO_CFG),
           "model.pretrained=true", f"output_dir={tmp_path / 'out'}", "train.device=cpu",
           f"dataset.data_dir={data}", f"jpeg_size={SIZE}"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot download rexnet_200 pretrained weights")
    assert "model.pretrained_file=PATH" in last and "model.pretrained=false" in last


def test_wandb_offline_logs_into_the_run_folder(data, tmp_path, monkeypatch):
    """The real wandb client, offline: the run lands in <run>/wandb/offline-run-*/ with its
    .wandb log (what `wandb sync` uploads), and the environment variable beats the config."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # keep $HOME clean
        monkeypatch.setenv(var, str(tmp_path / "wandb_home"))
    run_main(["-c", str(DEMO_CFG), *overrides(data, tmp_path, **{"train.epochs": 1, "train.max_steps_per_epoch": 1,
                                                              "train.val_per_epoch": 1})])
    logs = list((paths.run_dir(tmp_path, "rexnet200_bce", 0) / "wandb").glob("offline-run-*/*.wandb"))
    assert len(logs) == 1 and logs[0].stat().st_size > 0


def test_cpu_threads_share_the_cores(monkeypatch):
    # cores - loader workers, split over local ranks; RSNA_PE_CORES (JOBS in the wrappers)
    # replaces the machine's core count; an explicit OMP_NUM_THREADS leaves torch alone.
    from rsna_pe.core.runtime import set_cpu_threads
    old = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("RSNA_PE_CORES", "6")
        set_cpu_threads(num_workers=2)
        assert torch.get_num_threads() == 4
        set_cpu_threads(num_workers=0, local_world=3)
        assert torch.get_num_threads() == 2
        set_cpu_threads(num_workers=8)
        assert torch.get_num_threads() == 1
        torch.set_num_threads(3)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_cpu_threads(num_workers=0)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(old)
