"""Network types for the training engine: the ``Task`` base and its registry.

A task supplies model, datasets, one step and validation metrics (rsna_pe.cnn.CNNTask,
rsna_pe.rnn.RNNTask); stages that only rebuild a model (dump, inference) use this module, not
the engine.
"""
import copy
import importlib

from .errors import PipelineError

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
