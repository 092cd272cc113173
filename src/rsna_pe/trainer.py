"""The training engine shared by the CNN (stage 3) and the RNN (stage 6).

A network type is a ``Task`` (model, datasets, one step, validation metrics); this module
does the rest: seeding, mixed precision, channels_last, optional ``torch.compile``, gradient
accumulation, DDP, validation ``val_per_epoch`` times per epoch, top-k/best/last checkpoints,
resuming an unfinished run (under the rerun rule of rsna_pe.runs), metrics.csv and wandb. Blocks are built from config by name:
``loss`` (rsna_pe.losses), ``optimizer`` (any torch.optim class), ``scheduler`` (SCHEDULERS).
"""
import contextlib
import copy
import hashlib
import importlib
import logging
import math
import os
import random
import time

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from . import distributed, paths, runs
from .config import save_config
from .errors import PipelineError
from .folds import split_mask
from .io import atomic_to_csv, atomic_torch_save

log = logging.getLogger(__name__)

# network name -> (module, class) of its Task; imported lazily so each stays optional.
TASKS = {
    "cnn": ("rsna_pe.cnn", "CNNTask"),
    "rnn": ("rsna_pe.rnn", "RNNTask"),
}

class Task:
    """What a network type supplies to the engine: model, datasets, step, validation metrics."""

    collate_fn = None

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self):
        raise NotImplementedError

    def datasets(self):
        raise NotImplementedError

    def step(self, model, batch, device):
        """-> (loss scalar tensor, dict of detached CPU tensors used by ``val_metrics``)."""
        raise NotImplementedError

    def val_metrics(self, outs):
        raise NotImplementedError

    def finish(self, model, run_dir, val_loader, device):
        pass

    def extra_state(self):
        return {}

    @staticmethod
    def resolve_config(cfg):
        """Fill the config's derived values (e.g. sizes that default to another key) before
        the run starts, so checkpoints record what was used."""
        return cfg


def task_class(cfg):
    name = cfg.get("network")
    if name not in TASKS:
        raise PipelineError(f"unknown network '{name}' in {cfg.get('config_file', 'config')} "
                            f"(choose from {', '.join(TASKS)})")
    module, cls = TASKS[name]
    return getattr(importlib.import_module(module), cls)


def get_task(cfg):
    return task_class(cfg)(cfg)


def build_model(cfg):
    """The untrained network a config describes."""
    return get_task(cfg).build_model()


def without_pretrained(cfg):
    """A copy of ``cfg`` that builds the model without fetching/reading pretrained weights
    (for rebuilding from a checkpoint, whose own weights replace them)."""
    cfg = copy.deepcopy(cfg)
    m = cfg.get("model") or {}
    if "pretrained" in m:
        m["pretrained"] = False
    if "pretrained_file" in m:
        m["pretrained_file"] = ""
    return cfg


# ----------------------------------------------------------------------------- folds
def split_by_fold(df, fold, k_fold=3):
    """(train rows, val rows) of a frame with a ``fold`` column (fold ids 0..14)."""
    val = split_mask(df["fold"], fold, k_fold)
    return df[~val].reset_index(drop=True), df[val].reset_index(drop=True)


# ----------------------------------------------------------------------------- registries
def _optimizers():
    return {n.lower(): c for n, c in vars(torch.optim).items()
            if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)}


def build_optimizer(spec, params):
    """``{name, params}``: any torch.optim class by name, case-insensitive (AdamW = adamw)."""
    name = str(spec.get("name", ""))
    cls = _optimizers().get(name.lower())
    if cls is None:
        raise PipelineError(f"unknown optimizer.name '{name}' (a torch.optim class, e.g. AdamW)")
    try:
        return cls(params, **(spec.get("params") or {}))
    except TypeError as e:
        raise PipelineError(f"bad optimizer.params for {name}: {e}") from None


def _cosine(optimizer, epochs, eta_min=0.0):
    # Stepped once per epoch: the LR of epoch e is eta_min + (lr - eta_min)(1 + cos(pi e / T))/2.
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs, eta_min=eta_min)


def _constant(optimizer, epochs):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: 1.0)


SCHEDULERS = {"cosine": _cosine, "constant": _constant}


def build_scheduler(spec, optimizer, epochs):
    name = spec.get("name")
    if name not in SCHEDULERS:
        raise PipelineError(f"unknown scheduler.name '{name}' (choose from {', '.join(SCHEDULERS)})")
    try:
        return SCHEDULERS[name](optimizer, epochs, **(spec.get("params") or {}))
    except TypeError as e:
        raise PipelineError(f"bad scheduler.params for {name}: {e}") from None


# ----------------------------------------------------------------------------- helpers
def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def amp_settings(amp, device):
    """(autocast dtype or None, needs GradScaler): bf16 where the GPU has it, else fp16 with a
    scaler; CPU trains in fp32."""
    if not amp or device.type != "cuda":
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def set_cpu_threads(num_workers, local_world=1):
    """CPU training: share the cores between loader workers and the ranks on this machine.
    OpenMP threads that outnumber free cores spin against each other (steps 10x slower).
    RSNA_PE_CORES (set by the wrappers when JOBS runs share a machine) is this run's share of
    the cores; an explicit OMP_NUM_THREADS wins over everything."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    if os.environ.get("RSNA_PE_CORES", "").isdigit() and int(os.environ["RSNA_PE_CORES"]) > 0:
        cores = int(os.environ["RSNA_PE_CORES"])
    else:
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
    torch.set_num_threads(max(1, (cores - num_workers) // max(1, local_world)))


def _rng_state():
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        # plain types/tensors only, so torch.load(weights_only=True) accepts the checkpoint
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": random.getstate(),
    }


def _set_rng_state(s):
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(s["cuda"])
    keys, pos, has_gauss, gauss = s["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(pos), int(has_gauss), gauss))
    v, internal, g = s["python"]
    random.setstate((v, tuple(internal), g))


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (a group of one without torchrun) whose epoch can start part-way,
    so a resumed run sees the rest of the interrupted epoch in the same order."""

    skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


class ShardSampler(torch.utils.data.Sampler):
    """Every ``world``-th index from ``rank``, no padding: validation sees each item once."""

    def __init__(self, n, rank=0, world=1):
        self.idx = list(range(rank, n, world))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self):
        return len(self.idx)


def _worker_init(worker_id):
    info = torch.utils.data.get_worker_info()
    hook = getattr(info.dataset, "worker_init", None)
    if hook is not None:
        hook(info.seed)
    else:
        torch.set_num_threads(1)


def make_loader(ds, batch_size, sampler, num_workers, collate_fn, pin, drop_last, seed=0):
    # Own generator: making an iterator then draws worker seeds from it, not from the global
    # RNG, so dropout etc. continue identically after a resume.
    kw = dict(generator=torch.Generator().manual_seed(seed))
    if num_workers > 0:
        kw.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, sampler=sampler,
                                       num_workers=num_workers, collate_fn=collate_fn,
                                       pin_memory=pin, drop_last=drop_last, **kw)


def _plain(x):
    """numpy scalars/arrays -> python types: configs go to YAML and weights_only checkpoints."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)):
        return x.tolist()
    return x


def _state_dict(model):
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def _lr(optimizer):
    return float(optimizer.param_groups[0]["lr"])


class _Wandb:
    """wandb on rank 0, imported only when enabled (WANDB_MODE overrides wandb.mode)."""

    def __init__(self, cfg, run, is_main):
        wcfg = cfg.get("wandb") or {}
        mode = os.environ.get("WANDB_MODE") or wcfg.get("mode", "offline")
        self.run = None
        if not is_main or mode == "disabled":
            return
        try:
            import wandb
        except ImportError:
            log.warning("wandb is not installed: logging to metrics.csv only")
            return
        # Stable across reruns so a resumed run continues the same wandb run.
        where = hashlib.sha1(str(run.resolve()).encode()).hexdigest()[:8]
        rid = f"{cfg['run_name']}-fold{cfg['dataset']['fold']}-{where}"
        self.run = wandb.init(project=wcfg.get("project", "rsna-str-pe"), name=rid, id=rid,
                              dir=str(run), mode=mode, config=cfg, resume="allow",
                              group=cfg["run_name"])

    def log(self, data, step):
        if self.run is not None:
            self.run.log(data, step=step)

    def finish(self):
        if self.run is not None:
            self.run.finish()


# ----------------------------------------------------------------------------- engine
def train(cfg):
    """Train (or resume) the run ``cfg`` describes; works alone or under torchrun."""
    cfg = task_class(cfg).resolve_config(copy.deepcopy(cfg))
    tcfg = cfg["train"]
    d = distributed.init(tcfg.get("device", "auto"))
    try:
        return Trainer(cfg, d).fit()
    finally:
        distributed.cleanup()


class Trainer:
    def __init__(self, cfg, d):
        self.cfg, self.d, self.t = cfg, d, cfg["train"]
        fold = cfg["dataset"]["fold"]
        seeds = cfg.get("seeds") or [0]
        if not 0 <= fold < len(seeds):
            raise PipelineError(f"dataset.fold={fold} has no seed in seeds={seeds}")
        self.seed = int(seeds[fold])
        self.run = paths.run_dir(cfg["output_dir"], cfg["run_name"], fold)
        self.device = d.device

    # -- checkpoints
    def _save(self, name, full):
        c = dict(config=self.saved_cfg, record=self.record, model=_state_dict(self.model),
                 epoch=self.epoch, step=self.step, metrics=dict(self.last_metrics))
        if full:
            c.update(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                     scaler=self.scaler.state_dict() if self.scaler is not None else {},
                     rng=_rng_state(), next_epoch=self.next_epoch, next_batch=self.next_batch,
                     top_k=[list(x) for x in self.top_k], best_loss=self.best_loss,
                     training_done=self.training_done, finished=self.finished)
        atomic_torch_save(c, self.run / name)

    def _checkpoint(self, metrics):
        """Top-k by val_loss, best.ckpt, last.ckpt (rank 0)."""
        k = self.t.get("save_top_k", 3)
        loss = metrics["val_loss"]
        if k > 0 and math.isfinite(loss):
            name = f"epoch{self.epoch:02d}-step{self.step:07d}.ckpt"
            if len(self.top_k) < k or loss < max(x[0] for x in self.top_k):
                self._save(name, full=False)
                self.top_k.append((loss, name))
                self.top_k.sort()
                for _, old in self.top_k[k:]:
                    (self.run / old).unlink(missing_ok=True)
                self.top_k = self.top_k[:k]
        if math.isfinite(loss) and loss < self.best_loss:
            self.best_loss = loss
            self._save("best.ckpt", full=False)
        self._save("last.ckpt", full=True)

    # -- set-up
    def _load_last(self):
        path = self.run / "last.ckpt"
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise PipelineError(f"cannot read {path}: {type(e).__name__}; delete it to restart") from None

    def _loaders(self, train_ds, val_ds):
        t, d = self.t, self.d
        nw = t.get("num_workers", 0)
        pin = self.device.type == "cuda"
        collate = getattr(self.task, "collate_fn", None)
        self.sampler = ResumableSampler(train_ds, num_replicas=d.world, rank=d.rank, shuffle=True,
                                        seed=self.seed, drop_last=False)
        if len(self.sampler) < t["batch_size"]:
            raise PipelineError(f"train set of {len(train_ds)} items is smaller than "
                                f"train.batch_size={t['batch_size']} x {d.world} processes")
        # drop_last: a last batch of 1 would break BatchNorm, and DDP ranks must agree on count.
        seed = self.seed * 1000 + d.rank
        self.train_loader = make_loader(train_ds, t["batch_size"], self.sampler, nw, collate, pin,
                                        True, seed)
        vbs = t.get("val_batch_size") or t["batch_size"]
        self.val_loader = make_loader(val_ds, vbs, ShardSampler(len(val_ds), d.rank, d.world),
                                      nw, collate, pin, False, seed + 500)
        self.val_ds = val_ds

    def fit(self):
        cfg, t, d = self.cfg, self.t, self.d
        # Stale (other inputs or settings) stops here, or with overwrite starts afresh.
        self.record = runs.guard_run(cfg, self.run, d)
        state = self._load_last()
        if state is not None and state.get("finished"):
            log.info("%s already finished; nothing to do", self.run)
            return 0

        if self.device.type == "cpu":
            set_cpu_threads(t.get("num_workers", 0), int(os.environ.get("LOCAL_WORLD_SIZE", d.world)))
        seed_everything(self.seed + d.rank)  # DDP copies rank 0's initial weights to all
        # Resuming: the checkpoint's weights replace pretrained ones, so don't fetch them.
        self.task = get_task(cfg if state is None else without_pretrained(cfg))
        self.model = self.task.build_model().to(self.device)
        if t.get("channels_last", False):
            self.model = self.model.to(memory_format=torch.channels_last)
        train_ds, val_ds = self.task.datasets()
        extra = getattr(self.task, "extra_state", lambda: {})()
        self.saved_cfg = dict(cfg, extra_state=_plain(extra))
        self._loaders(train_ds, val_ds)

        self.epochs = t["epochs"]
        self.optimizer = build_optimizer(cfg["optimizer"], self.model.parameters())
        self.scheduler = build_scheduler(cfg["scheduler"], self.optimizer, self.epochs)
        self.amp_dtype, use_scaler = amp_settings(t.get("amp", False), self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True

        self.epoch = self.step = self.next_epoch = self.next_batch = 0
        self.top_k, self.best_loss, self.last_metrics = [], math.inf, {}
        self.training_done = self.finished = False
        self.rows = []
        if state is not None:
            self._restore(state)
            del state

        self.train_model, self.ddp = self.model, None
        if d.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP
            self.ddp = self.train_model = DDP(self.model, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        self.eval_model = self.model
        if t.get("compile", False):
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model)

        if d.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            save_config(self.saved_cfg, self.run / "config.yaml")
        self.wandb = _Wandb(cfg, self.run, d.is_main)
        try:
            if not self.training_done:
                self._train_loop()
            self._finish()
        finally:
            self.wandb.finish()
        return 0

    def _restore(self, state):
        """Continue from ``last.ckpt``: weights, optimizer, schedule, counters, RNG, metrics."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.next_epoch, self.next_batch = state["next_epoch"], state["next_batch"]
        self.top_k = [tuple(x) for x in state["top_k"]]
        self.best_loss, self.last_metrics = state["best_loss"], state["metrics"]
        self.training_done = state["training_done"]
        if self.d.is_main:
            _set_rng_state(state["rng"])
        else:
            seed_everything(self.seed + self.d.rank + 7919 * self.step)
        metrics_csv = self.run / "metrics.csv"
        if metrics_csv.is_file():  # rows past the checkpoint belong to the lost segment
            self.rows = [r for r in pd.read_csv(metrics_csv).to_dict("records") if r["step"] <= self.step]
        log.info("resuming %s at epoch %d batch %d (step %d, lr %.3g)", self.run,
                 self.next_epoch, self.next_batch, self.step, _lr(self.optimizer))

    # -- loop
    def _plan(self):
        """Batches per epoch and the optimizer steps (within an epoch) after which to validate."""
        accum = max(1, self.t.get("accum_steps", 1))
        n_batches = len(self.train_loader)  # sampler.skip is 0 here: a whole epoch
        steps = math.ceil(n_batches / accum)
        cap = self.t.get("max_steps_per_epoch", 0)
        if cap:
            steps = min(steps, cap)
        n_val = max(1, self.t.get("val_per_epoch", 1))
        val_at = sorted({math.ceil(k * steps / n_val) for k in range(1, n_val + 1)})
        return accum, min(n_batches, steps * accum), val_at

    def _train_loop(self):
        from tqdm import tqdm

        d, t = self.d, self.t
        self.sampler.skip = 0
        accum, n_batches, val_at = self._plan()
        log_every = t.get("log_every", 50)
        loss_sum, loss_n = torch.zeros((), device=self.device), 0
        for epoch in range(self.next_epoch, self.epochs):
            self.epoch = epoch
            start = self.next_batch if epoch == self.next_epoch else 0
            self.sampler.set_epoch(epoch)
            self.sampler.skip = start * t["batch_size"]
            self.train_model.train()
            it = iter(self.train_loader)
            bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch}", disable=not d.is_main,
                       dynamic_ncols=True, mininterval=2.0)
            t0 = time.time()
            for b in range(start, n_batches):
                batch = next(it)
                group_end = (b + 1) % accum == 0 or b + 1 == n_batches
                group = min(accum, n_batches - (b // accum) * accum)  # batches in this step
                sync = contextlib.nullcontext() if group_end or self.ddp is None else self.ddp.no_sync()
                with sync:
                    with autocast(self.device, self.amp_dtype):
                        loss, _ = self.task.step(self.train_model, batch, self.device)
                    scaled = loss / group
                    (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
                loss_sum += loss.detach().float()
                loss_n += 1
                bar.update(1)
                if not group_end:
                    continue
                self._optimizer_step()
                if log_every and self.step % log_every == 0 and d.is_main:
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{_lr(self.optimizer):.2e}")
                    self.wandb.log({"train/loss_step": loss.item(), "lr": _lr(self.optimizer)}, self.step)
                if math.ceil((b + 1) / accum) in val_at:
                    train_loss = distributed.mean_across((loss_sum / max(loss_n, 1)).item(), d)
                    loss_sum.zero_()
                    loss_n = 0
                    self._validate_and_save(train_loss, end=b + 1 == n_batches, batch=b + 1,
                                            seconds=time.time() - t0)
                    self.train_model.train()
            bar.close()
            self.sampler.skip = 0
        self.training_done = True

    def _optimizer_step(self):
        clip = self.t.get("clip_grad", 0)
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1

    @torch.no_grad()
    def _evaluate(self):
        """Run the val set (each rank its shard), gather outputs, metrics on rank 0 -> all."""
        distributed.broadcast_buffers(self.model, self.d)
        self.eval_model.eval()
        outs = []
        for batch in self.val_loader:
            with autocast(self.device, self.amp_dtype):
                _, out = self.task.step(self.eval_model, batch, self.device)
            outs.append(out)
        every = distributed.gather_objects(outs, self.d)
        metrics = None
        if self.d.is_main:
            metrics = {k: float(v) for k, v in
                       self.task.val_metrics([o for outs_r in every for o in outs_r]).items()}
        return distributed.broadcast_object(metrics, self.d)

    def _validate_and_save(self, train_loss, end, batch, seconds):
        lr = _lr(self.optimizer)
        metrics = self._evaluate()
        if "val_loss" not in metrics:
            raise PipelineError(f"{type(self.task).__name__}.val_metrics must return val_loss")
        if end:  # the cosine schedule moves once per epoch, after the epoch's last validation
            self.scheduler.step()
            self.next_epoch, self.next_batch = self.epoch + 1, 0
        else:
            self.next_epoch, self.next_batch = self.epoch, batch
        self.training_done = end and self.epoch + 1 >= self.epochs
        row = dict(epoch=self.epoch, step=self.step, lr=lr, train_loss=train_loss, **metrics,
                   seconds=round(seconds, 1))
        self.last_metrics = row
        if self.d.is_main:
            self.rows.append(row)
            atomic_to_csv(pd.DataFrame(self.rows), self.run / "metrics.csv")
            self._checkpoint(metrics)
            self.wandb.log({"train/loss": train_loss, "lr": lr, "epoch": self.epoch,
                            **{f"val/{k[4:] if k.startswith('val_') else k}": v
                               for k, v in metrics.items()}}, self.step)
            log.info("epoch %d step %d: %s", self.epoch, self.step,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items()
                              if isinstance(v, float) and k not in ("seconds",)))
        distributed.barrier(self.d)

    def _finish(self):
        """Task's final step with the best weights (rank 0), then mark the run finished."""
        # Final weights per rank: DDP ranks must agree (compared by tests and people).
        log.info("rank %d parameters sha256 %s", self.d.rank, runs.weights_digest(self.model.named_parameters()))
        if self.d.is_main:
            best = self.run / "best.ckpt"
            if best.is_file():
                self.model.load_state_dict(torch.load(best, map_location="cpu",
                                                      weights_only=True)["model"])
            self.model.eval()
            loader = make_loader(self.val_ds, self.val_loader.batch_size, None, 0,
                                 getattr(self.task, "collate_fn", None),
                                 self.device.type == "cuda", False)
            finish = getattr(self.task, "finish", None)
            if finish is not None:
                finish(self.model, self.run, loader, self.device)
            self.finished = True
            last = torch.load(self.run / "last.ckpt", map_location="cpu", weights_only=True)
            last["finished"] = True
            atomic_torch_save(last, self.run / "last.ckpt")
            log.info("finished %s (best val_loss %.4f)", self.run, self.best_loss)
        distributed.barrier(self.d)
