"""The task's label facts: names, order, score weights. Defined once; loop over these."""
from .errors import PipelineError

EXAM_LABELS = (
    "negative_exam_for_pe",
    "indeterminate",
    "chronic_pe",
    "acute_and_chronic_pe",
    "central_pe",
    "leftsided_pe",
    "rightsided_pe",
    "rv_lv_ratio_gte_1",
    "rv_lv_ratio_lt_1",
)
IMAGE_LABEL = "pe_present_on_image"
# Order of every 10-vector in the pipeline: 9 exam-level labels, then the image-level one.
LABELS = EXAM_LABELS + (IMAGE_LABEL,)
N_EXAM = len(EXAM_LABELS)
# What a site can validate per study, in report order: PE present in the exam (the study's
# largest image probability, the pipeline's call) and the nine exam labels.
PE_PRESENT = "pe_present"
STUDY_LABELS = (PE_PRESENT,) + EXAM_LABELS

# Columns of the Kaggle train.csv that are neither ids nor LABELS.
QA_COLUMNS = ("qa_motion", "qa_contrast", "flow_artifact", "true_filling_defect_not_pe")
ID_COLUMNS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
TRAIN_COLUMNS = ID_COLUMNS + (
    "pe_present_on_image", "negative_exam_for_pe", "qa_motion", "qa_contrast", "flow_artifact",
    "rv_lv_ratio_gte_1", "rv_lv_ratio_lt_1", "leftsided_pe", "chronic_pe",
    "true_filling_defect_not_pe", "rightsided_pe", "acute_and_chronic_pe", "central_pe",
    "indeterminate",
)

# Competition weights of the weighted log loss.
EXAM_WEIGHTS = {
    "negative_exam_for_pe": 0.0736196319,
    "indeterminate": 0.09202453988,
    "chronic_pe": 0.1042944785,
    "acute_and_chronic_pe": 0.1042944785,
    "central_pe": 0.1877300613,
    "leftsided_pe": 0.06257668712,
    "rightsided_pe": 0.06257668712,
    "rv_lv_ratio_gte_1": 0.2346625767,
    "rv_lv_ratio_lt_1": 0.0782208589,
}
IMAGE_WEIGHT = 0.07361963


# Submission ids of exam-level predictions: "<StudyInstanceUID>_<label>" (an image's id is
# its SOPInstanceUID). Study ids hold no "_", labels do: split at the first one.
def exam_id(study, label):
    """The submission id of one exam-level prediction."""
    return f"{study}_{label}"


def exam_ids(study_ids):
    """The nine exam ids of each study, studies in the given order, labels in EXAM_LABELS order."""
    return [exam_id(s, label) for s in study_ids for label in EXAM_LABELS]


def parse_exam_id(id_):
    """(study, label) of an exam id; None for any other id (an image's SOPInstanceUID)."""
    study, sep, label = str(id_).partition("_")
    return (study, label) if sep and study and label in EXAM_LABELS else None


def study_series(df, source):
    """Sorted (study, series) pairs of a frame with the id columns; one series per study is
    expected (as in the competition data), else a one-line error naming ``source``."""
    pairs = df[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates().astype(str)
    dup = pairs["StudyInstanceUID"].duplicated()
    if dup.any():
        raise PipelineError(f"{source}: study {pairs.loc[dup, 'StudyInstanceUID'].iloc[0]} has several "
                            "series; one series per study is expected")
    return sorted(map(tuple, pairs.to_numpy()))
