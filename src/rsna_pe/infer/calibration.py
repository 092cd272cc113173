"""A site's calibration of the ensemble's probabilities (``calibration.json``): its format and
checks, and applying it to a study's predictions (stage 7 and predict_study.py, when the model
bundle carries it). Fitting it is site validation's part (rsna_pe.validation.calibration).

Per label: platt, p' = sigmoid(a logit(p) + b), or temperature, p' = sigmoid(logit(p) / T).
Both keep the order of the probabilities (a > 0, T > 0). The exam labels' maps apply to the
post-processed exam outputs; the map of ``pe_present`` (PE in the exam, which the pipeline calls
from the largest image probability) applies to every image probability, so the study's largest
is mapped exactly as it was fit. The result is post-processed again: a calibrated value can
cross 0.5 and break a consistency rule.
"""
import numpy as np

from ..core.errors import PipelineError
from ..core.io import checked_number, json_document
from ..core.labels import EXAM_LABELS, PE_PRESENT, STUDY_LABELS
from ..metric import postprocess

FORMAT, FORMAT_VERSION = "rsna-pe-calibration", 1
FILE = "calibration.json"
METHODS = ("platt", "temperature")
P_CLIP = 1e-6     # probabilities 0 and 1 get finite logits
MIN_SLOPE = 1e-3  # a model anti-correlated with the truth is not turned around by calibration


def logit(p):
    p = np.clip(np.asarray(p, dtype=np.float64), P_CLIP, 1 - P_CLIP)
    return np.log(p) - np.log1p(-p)


def sigmoid(z):
    return np.exp(-np.logaddexp(0.0, -np.asarray(z, dtype=np.float64)))


def apply(params, p):
    """Calibrated probabilities of ``p`` under one label's parameters."""
    z = logit(p)
    if "temperature" in params:
        return sigmoid(z / params["temperature"])
    return sigmoid(params["slope"] * z + params["intercept"])


def apply_block(doc, label, p):
    """``p`` calibrated with the document's parameters of ``label`` (unchanged without them)."""
    params = doc["labels"].get(label)
    return np.asarray(p, dtype=np.float64) if params is None else apply(params, p)


def calibrate(doc, exam, img):
    """One study's post-processed (exam (9,), image (S,)) -> calibrated, post-processed again."""
    img = apply_block(doc, PE_PRESENT, img)
    exam = np.array([apply_block(doc, label, exam[k]) for k, label in enumerate(EXAM_LABELS)])
    return postprocess(exam[None], [img])[0], img


def validate(doc, where):
    """``doc`` if well formed (a known method; per known label a finite positive temperature, or
    a positive slope and a finite intercept), else a one-line error naming ``where`` and the key."""
    if doc.get("method") not in METHODS:
        raise PipelineError(f"{where}: key 'method' must be one of {', '.join(METHODS)}")
    want = ("temperature",) if doc["method"] == "temperature" else ("slope", "intercept")
    if not isinstance(doc.get("labels"), dict):
        raise PipelineError(f"{where}: key 'labels' must be an object")
    for label, params in doc["labels"].items():
        if label not in STUDY_LABELS:
            raise PipelineError(f"{where}: key 'labels.{label}': unknown label (known: {', '.join(STUDY_LABELS)})")
        if not isinstance(params, dict) or any(k not in params for k in want):
            raise PipelineError(f"{where}: key 'labels.{label}' needs {', '.join(want)}")
        checked_number(params[want[0]], f"{where}: key 'labels.{label}.{want[0]}'", MIN_SLOPE / 10, np.inf)
        if doc["method"] == "platt":
            checked_number(params["intercept"], f"{where}: key 'labels.{label}.intercept'", -np.inf, np.inf)
    return doc


def parse(data, where):
    """The checked document in the bytes (or text) ``data`` of a calibration.json."""
    return validate(json_document(data, where, FORMAT, FORMAT_VERSION), where)
