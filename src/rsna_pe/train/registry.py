"""The training engine's tasks by network name (rsna_pe.models.networks.NETWORKS)."""
from ..models import networks
from .cnn_task import CNNTask
from .head_task import HeadTask

TASKS = {"cnn": CNNTask, "rnn": HeadTask}


def task_class(cfg):
    """The Task class of the network ``cfg`` describes (a one-line error for an unknown one)."""
    return TASKS[networks.network_of(cfg)]


def get_task(cfg):
    return task_class(cfg)(cfg)
