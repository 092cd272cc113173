"""Operating points fixed in advance (``operating_points.json``): its format and checks. The
thresholds are chosen on the development cross-validation by site validation
(rsna_pe.validation.thresholds) and stored beside the models: in a run folder, or in a model
bundle, whose loading checks them here. A call is positive when ``p >= threshold``."""
from ..core.errors import PipelineError
from ..core.io import checked_number, json_document
from ..core.labels import STUDY_LABELS

FORMAT, FORMAT_VERSION = "rsna-pe-operating-points", 1
FILE = "operating_points.json"
RULE = "positive when p >= threshold"


def validate(doc, where):
    """``doc`` if it is a well-formed operating-points document (the rule; per known label a
    non-empty list of points whose target and threshold are numbers in [0, 1]), else a one-line
    error naming ``where`` and the key."""
    if doc.get("rule") != RULE:
        raise PipelineError(f"{where}: key 'rule' must be '{RULE}'")
    labels = doc.get("labels")
    if not isinstance(labels, dict) or not labels:
        raise PipelineError(f"{where}: key 'labels' must be a non-empty object")
    for label, points in labels.items():
        if label not in STUDY_LABELS:
            raise PipelineError(f"{where}: key 'labels.{label}': unknown label (known: {', '.join(STUDY_LABELS)})")
        if not isinstance(points, list) or not points:
            raise PipelineError(f"{where}: key 'labels.{label}' must hold a non-empty list of points")
        for i, pt in enumerate(points):
            key = f"{where}: key 'labels.{label}.{i}"
            if not isinstance(pt, dict):
                raise PipelineError(f"{key}' is not an object")
            checked_number(pt.get("target_sensitivity"), f"{key}.target_sensitivity'", 0.0, 1.0)
            checked_number(pt.get("threshold"), f"{key}.threshold'", 0.0, 1.0)
    return doc


def parse(data, where):
    """The checked document in the bytes (or text) ``data`` of an operating_points.json."""
    return validate(json_document(data, where, FORMAT, FORMAT_VERSION), where)
