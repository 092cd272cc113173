"""The training engine shared by the CNN (stage 3) and the head (stage 6).

A network type is a ``Task`` (rsna_pe.train.tasks: model, datasets, one step, validation metrics);
the engine does the rest: seeding, mixed precision, channels_last, optional ``torch.compile``,
gradient accumulation, DDP, validation ``val_per_epoch`` times per epoch, checkpoints
(rsna_pe.train.checkpoint.CheckpointKeeper), resuming an unfinished run under the rerun rule of
rsna_pe.train.run_records, metrics.csv and wandb. Optimizer and schedule come from rsna_pe.train.optim.
"""
import contextlib
import copy
import logging
import math
import os
import time

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ..core import paths, runtime
from ..core.config import save_config
from ..core.errors import PipelineError
from ..core.io import atomic_to_csv
from ..core.runtime import amp_settings, autocast, seed_everything, set_cpu_threads
from ..models.networks import without_pretrained
from .checkpoint import CheckpointKeeper, state_dict
from .loaders import ResumableSampler, ShardSampler, make_loader
from .optim import build_optimizer, build_scheduler
from .registry import get_task, task_class
from .run_records import guard_run
from .tracking import WandbRun

log = logging.getLogger(__name__)


def _plain(x):
    """numpy scalars/arrays -> python types: configs go to YAML and weights_only checkpoints."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.ndarray, np.generic)):
        return x.tolist()
    return x


def _lr(optimizer):
    return float(optimizer.param_groups[0]["lr"])



# ----------------------------------------------------------------------------- engine
def train(cfg):
    """Train (or resume) the run ``cfg`` describes; works alone or under torchrun."""
    cfg = task_class(cfg).resolve_config(copy.deepcopy(cfg))
    dist = runtime.init(cfg["train"].get("device", "auto"))
    try:
        return Trainer(cfg, dist).fit()
    finally:
        runtime.cleanup()


class Trainer:
    """One run of one fold: check it, set it up (or resume it), train, finish."""

    def __init__(self, cfg, dist):
        self.cfg, self.dist, self.tcfg = cfg, dist, cfg["train"]
        fold = cfg["dataset"]["fold"]
        seeds = cfg.get("seeds") or [0]
        if not 0 <= fold < len(seeds):
            raise PipelineError(f"dataset.fold={fold} has no seed in seeds={seeds}")
        self.seed = int(seeds[fold])
        self.run = paths.run_dir(cfg["output_dir"], cfg["run_name"], fold)
        self.device = dist.device
        self.keeper = CheckpointKeeper(self.run, self.tcfg.get("save_top_k", 3))

    def fit(self):
        state = self._check_run()
        if state is not None and state.get("finished"):
            log.info("%s already finished; nothing to do", self.run)
            return 0
        self._set_up_runtime()
        self._build_task(resuming=state is not None)
        self._build_optimizer()
        self._start_counters()
        if state is not None:
            self._restore(state)
            del state
        self._wrap_model()
        self._save_run_config()
        self.wandb = WandbRun(self.cfg, self.run, self.dist.is_main)
        try:
            if not self.training_done:
                self._train_loop()
            self._finish()
        finally:
            self.wandb.finish()
        return 0

    # -- the steps of fit
    def _check_run(self):
        """The rerun rule (stale inputs or settings stop here, or with overwrite start afresh);
        returns the state of ``last.ckpt`` to resume from, if any."""
        self.record = guard_run(self.cfg, self.run, self.dist)
        return self.keeper.load_last()

    def _set_up_runtime(self):
        if self.device.type == "cpu":
            set_cpu_threads(self.tcfg.get("num_workers", 0),
                            int(os.environ.get("LOCAL_WORLD_SIZE", self.dist.world)))
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        seed_everything(self.seed + self.dist.rank)  # DDP copies rank 0's initial weights to all

    def _build_task(self, resuming):
        # Resuming: the checkpoint's weights replace pretrained ones, so don't fetch them.
        self.task = get_task(without_pretrained(self.cfg) if resuming else self.cfg)
        self.model = self.task.build_model().to(self.device)
        if self.tcfg.get("channels_last", False):
            self.model = self.model.to(memory_format=torch.channels_last)
        train_ds, val_ds = self.task.datasets()
        self.saved_cfg = dict(self.cfg, extra_state=_plain(self.task.extra_state()))
        self._loaders(train_ds, val_ds)

    def _build_optimizer(self):
        self.epochs = self.tcfg["epochs"]
        self.optimizer = build_optimizer(self.cfg["optimizer"], self.model.parameters())
        self.scheduler = build_scheduler(self.cfg["scheduler"], self.optimizer, self.epochs)
        self.amp_dtype, use_scaler = amp_settings(self.tcfg.get("amp", False), self.device)
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _start_counters(self):
        self.epoch = self.step = self.next_epoch = self.next_batch = 0
        self.last_metrics, self.rows = {}, []
        self.training_done = self.finished = False

    def _restore(self, state):
        """Continue from ``last.ckpt``: weights, optimizer, schedule, counters, RNG, metrics."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.next_epoch, self.next_batch = state["next_epoch"], state["next_batch"]
        self.keeper.restore(state)
        self.last_metrics = state["metrics"]
        self.training_done = state["training_done"]
        if self.dist.is_main:
            runtime.set_rng_state(state["rng"])
        else:
            seed_everything(self.seed + self.dist.rank + 7919 * self.step)
        metrics_csv = self.run / "metrics.csv"
        if metrics_csv.is_file():  # rows past the checkpoint belong to the lost segment
            self.rows = [r for r in pd.read_csv(metrics_csv).to_dict("records") if r["step"] <= self.step]
        log.info("resuming %s at epoch %d batch %d (step %d, lr %.3g)", self.run,
                 self.next_epoch, self.next_batch, self.step, _lr(self.optimizer))

    def _wrap_model(self):
        """DDP and compile wrap the training model; validation runs the plain (or compiled) one."""
        self.train_model, self.ddp = self.model, None
        if self.dist.enabled:
            self.ddp = self.train_model = DDP(self.model, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        self.eval_model = self.model
        if runtime.resolve_compile(self.tcfg.get("compile", False), self.device.type):
            self.train_model = torch.compile(self.train_model)
            self.eval_model = torch.compile(self.model)

    def _save_run_config(self):
        if self.dist.is_main:
            self.run.mkdir(parents=True, exist_ok=True)
            save_config(self.saved_cfg, self.run / "config.yaml")

    def _loaders(self, train_ds, val_ds):
        tcfg, dist = self.tcfg, self.dist
        nw = tcfg.get("num_workers", 0)
        pin = self.device.type == "cuda"
        collate = self.task.collate_fn
        self.sampler = ResumableSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True,
                                        seed=self.seed, drop_last=False)
        if len(self.sampler) < tcfg["batch_size"]:
            raise PipelineError(f"train set of {len(train_ds)} items is smaller than "
                                f"train.batch_size={tcfg['batch_size']} x {dist.world} processes")
        # drop_last: a last batch of 1 would break BatchNorm, and DDP ranks must agree on count.
        seed = self.seed * 1000 + dist.rank
        self.train_loader = make_loader(train_ds, tcfg["batch_size"], self.sampler, nw, collate, pin,
                                        True, seed)
        vbs = tcfg.get("val_batch_size") or tcfg["batch_size"]
        self.val_loader = make_loader(val_ds, vbs, ShardSampler(len(val_ds), dist.rank, dist.world),
                                      nw, collate, pin, False, seed + 500)
        self.val_ds = val_ds

    # -- checkpoints
    def _weights(self):
        """What every checkpoint holds: config, record, weights, where training stood."""
        return dict(config=self.saved_cfg, record=self.record, model=state_dict(self.model),
                    epoch=self.epoch, step=self.step, metrics=dict(self.last_metrics))

    def _resume_state(self):
        """What last.ckpt adds to resume exactly (the keeper adds its top-k and best loss)."""
        return dict(self._weights(), optimizer=self.optimizer.state_dict(),
                    scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else {},
                    rng=runtime.rng_state(), next_epoch=self.next_epoch, next_batch=self.next_batch,
                    training_done=self.training_done, finished=self.finished)

    # -- loop
    def _plan(self):
        """Batches per epoch and the optimizer steps (within an epoch) after which to validate."""
        accum = max(1, self.tcfg.get("accum_steps", 1))
        n_batches = len(self.train_loader)  # sampler.skip is 0 here: a whole epoch
        steps = math.ceil(n_batches / accum)
        cap = self.tcfg.get("max_steps_per_epoch", 0)
        if cap:
            steps = min(steps, cap)
        n_val = max(1, self.tcfg.get("val_per_epoch", 1))
        val_at = sorted({math.ceil(k * steps / n_val) for k in range(1, n_val + 1)})
        return accum, min(n_batches, steps * accum), val_at

    def _train_loop(self):
        dist, tcfg = self.dist, self.tcfg
        self.sampler.skip = 0
        accum, n_batches, val_at = self._plan()
        log_every = tcfg.get("log_every", 50)
        loss_sum, loss_n = torch.zeros((), device=self.device), 0
        for epoch in range(self.next_epoch, self.epochs):
            self.epoch = epoch
            start = self.next_batch if epoch == self.next_epoch else 0
            self.sampler.set_epoch(epoch)
            self.sampler.skip = start * tcfg["batch_size"]
            self.train_model.train()
            it = iter(self.train_loader)
            bar = tqdm(total=n_batches, initial=start, desc=f"epoch {epoch}", disable=not dist.is_main,
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
                if log_every and self.step % log_every == 0 and dist.is_main:
                    bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{_lr(self.optimizer):.2e}")
                    self.wandb.log({"train/loss_step": loss.item(), "lr": _lr(self.optimizer)}, self.step)
                if math.ceil((b + 1) / accum) in val_at:
                    train_loss = runtime.mean_across((loss_sum / max(loss_n, 1)).item(), dist)
                    loss_sum.zero_()
                    loss_n = 0
                    self._validate_and_save(train_loss, end=b + 1 == n_batches, batch=b + 1,
                                            seconds=time.time() - t0)
                    self.train_model.train()
            bar.close()
            self.sampler.skip = 0
        self.training_done = True

    def _optimizer_step(self):
        clip = self.tcfg.get("clip_grad", 0)
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
        runtime.broadcast_buffers(self.model, self.dist)
        self.eval_model.eval()
        outs = []
        for batch in self.val_loader:
            with autocast(self.device, self.amp_dtype):
                _, out = self.task.step(self.eval_model, batch, self.device)
            outs.append(out)
        every = runtime.gather_objects(outs, self.dist)
        metrics = None
        if self.dist.is_main:
            metrics = {k: float(v) for k, v in
                       self.task.val_metrics([o for outs_r in every for o in outs_r]).items()}
        return runtime.broadcast_object(metrics, self.dist)

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
        if self.dist.is_main:
            self.rows.append(row)
            atomic_to_csv(pd.DataFrame(self.rows), self.run / "metrics.csv")
            name = f"epoch{self.epoch:02d}-step{self.step:07d}.ckpt"
            self.keeper.save(metrics["val_loss"], name, self._weights(), self._resume_state)
            self.wandb.log({"train/loss": train_loss, "lr": lr, "epoch": self.epoch,
                            **{f"val/{k[4:] if k.startswith('val_') else k}": v
                               for k, v in metrics.items()}}, self.step)
            log.info("epoch %d step %d: %s", self.epoch, self.step,
                     " ".join(f"{k}={v:.4g}" for k, v in row.items()
                              if isinstance(v, float) and k not in ("seconds",)))
        runtime.barrier(self.dist)

    def _finish(self):
        """Task's final step with the best weights (rank 0), then mark the run finished."""
        # Final weights per rank: DDP ranks must agree (compared by tests and people).
        log.info("rank %d parameters sha256 %s", self.dist.rank, runtime.weights_digest(self.model.named_parameters()))
        if self.dist.is_main:
            best = self.keeper.best()
            if best is not None:
                self.model.load_state_dict(best["model"])
            self.model.eval()
            loader = make_loader(self.val_ds, self.val_loader.batch_size, None, 0, self.task.collate_fn,
                                 self.device.type == "cuda", False)
            self.task.finish(self.model, self.run, loader, self.device)
            self.finished = True
            self.keeper.mark_finished()
            log.info("finished %s (best val_loss %.4f)", self.run, self.keeper.best_loss)
        runtime.barrier(self.dist)
