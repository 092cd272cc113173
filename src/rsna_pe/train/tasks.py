"""The ``Task`` base: what a network type supplies to the training engine.

A task supplies datasets, one step and validation metrics (rsna_pe.train.cnn_task.CNNTask,
rsna_pe.train.head_task.HeadTask); its model, and the labels its outputs stand for, come from
rsna_pe.models.networks, which is all that stages rebuilding a model (dump, inference) need. The
registry of tasks by network name is rsna_pe.train.registry.
"""
from ..models import networks


class Task:
    """What a network type supplies to the engine: model, datasets, step, validation metrics."""

    collate_fn = None

    def __init__(self, cfg):
        self.cfg = cfg

    def build_model(self):
        return networks.build_network(self.cfg)

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

    @staticmethod
    def input_sets(cfg):
        """{name: folder} of the records a run is made from (rsna_pe.train.run_records)."""
        raise NotImplementedError

