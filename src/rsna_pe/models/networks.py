"""Which network a config describes: its builder and the labels its outputs stand for.

``network: cnn`` is the slice CNN (rsna_pe.models.cnn), ``network: rnn`` the stage-6 head over a series'
embeddings (rsna_pe.models.head; the name stays ``rnn`` in configs and checkpoints even for the
transformer head). Rebuilding a model for inference (checkpoint, bundle) needs only this module,
not the training tasks (docs/architecture.md).
"""
import copy

from ..core import labels as L
from ..core.errors import ConfigError
from . import cnn, exam_targets, head

NETWORKS = ("cnn", "rnn")


def network_of(cfg):
    """``cfg['network']``, or a one-line error naming the config when it is no known network."""
    name = cfg.get("network")
    if name not in NETWORKS:
        raise ConfigError(f"unknown network '{name}' in {cfg.get('config_file', 'config')} "
                            f"(choose from {', '.join(NETWORKS)})")
    return name


def build_network(cfg):
    """The untrained network a config describes (pretrained backbone weights as it says)."""
    if network_of(cfg) == "cnn":
        return cnn.build_cnn(cfg["model"])
    return head.build_head(cfg["model"])


def output_labels(cfg):
    """The labels a network's outputs stand for, in output order: a CNN's image logit, then the
    exam labels of ``model.exam_targets`` (the order of the logits ``in_embedding`` appends to
    its embedding); a head's exam logits in EXAM_LABELS order, then the image logit (LABELS)."""
    if network_of(cfg) == "cnn":
        return [L.IMAGE_LABEL, *exam_targets.target_labels(cfg.get("model"))]
    return list(L.LABELS)


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
