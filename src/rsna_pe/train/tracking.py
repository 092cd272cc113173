"""Experiment tracking: wandb on rank 0, offline by default, imported only when enabled."""
import hashlib
import logging
import os

log = logging.getLogger(__name__)


class WandbRun:
    """wandb on rank 0, imported only when enabled (WANDB_MODE overrides wandb.mode)."""

    def __init__(self, cfg, run, is_main):
        wcfg = cfg.get("wandb") or {}
        mode = os.environ.get("WANDB_MODE") or wcfg.get("mode", "offline")
        self.run = None
        if not is_main or mode == "disabled":
            return
        try:
            import wandb  # optional: needed only when tracking is on
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
