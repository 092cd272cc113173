"""The competition score, the consistency rules, post-processing and the submission format.

One implementation for training (validation score), evaluation (``src/evaluate.py``) and
inference (post-processing, submission writing and checking). Predictions travel as
``exam_pred`` (N, 9) in ``EXAM_LABELS`` order plus ``img_pred``, a list of N 1-D arrays (one
per study, slices in z order); ground truth in the same shapes.

Modules: ``scoring`` (weighted log loss, per-label numbers, scoring a submission),
``consistency`` (the rules), ``postprocessing``, ``submission`` (the ``id,label`` format),
``truth`` (ground truth per study, label prior).
"""
from .consistency import (
                          ACUTE_CHRONIC,
                          CHRONIC,
                          CONSISTENCY_RULES,
                          IND,
                          NEG,
                          RULE_NEG_OTHER,
                          RULE_NEG_PAIR,
                          RULE_POS_CHRONIC,
                          RULE_POS_INDETERMINATE,
                          RULE_POS_NEGATIVE,
                          RULE_POS_RV_LV,
                          RULE_POS_SIDE,
                          RV_GTE,
                          RV_LT,
                          SIDES,
                          THRESHOLD,
                          consistency_violations,
                          is_positive,
)
from .postprocessing import HIGH, LOW, postprocess
from .scoring import EPS, per_label_log_loss, score_predictions, score_submission, weighted_log_loss
from .submission import covered_studies, from_submission, prior_submission, to_submission, validate_submission
from .truth import StudyLabels, labels_from_train_csv, prior_prediction, subset_labels

__all__ = [
    "ACUTE_CHRONIC", "CHRONIC", "CONSISTENCY_RULES", "EPS", "HIGH", "IND", "LOW", "NEG",
    "RULE_NEG_OTHER", "RULE_NEG_PAIR", "RULE_POS_CHRONIC", "RULE_POS_INDETERMINATE",
    "RULE_POS_NEGATIVE", "RULE_POS_RV_LV", "RULE_POS_SIDE", "RV_GTE", "RV_LT", "SIDES",
    "THRESHOLD", "StudyLabels", "consistency_violations", "covered_studies", "from_submission",
    "is_positive", "labels_from_train_csv", "per_label_log_loss", "postprocess",
    "prior_prediction", "prior_submission", "score_predictions", "score_submission",
    "subset_labels", "to_submission", "validate_submission", "weighted_log_loss",
]
