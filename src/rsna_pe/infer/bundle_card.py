"""MODEL_CARD.md of a model bundle: what the models are, what they were trained on and under
which terms, how well they did in cross-validation, with which software, and their limits;
then its ONNX models, if any (opset, versions, each one's check and exporter); last, the site files it
carries (operating points, calibration)."""
import platform
from pathlib import Path

from ..core.labels import EXAM_LABELS, IMAGE_LABEL
from ..records.provenance import git_commit, package_versions
from .calibration import FILE as CALIBRATION
from .operating_points import FILE as OPERATING_POINTS

PACKAGES = ("torch", "timm", "safetensors", "numpy", "pydicom", "opencv-python-headless", "captum")
CITATION = ("Colak E, Kitamura FC, Hobbs SB, et al. The RSNA Pulmonary Embolism CT Dataset. "
            "Radiology: Artificial Intelligence 2021;3(2):e200254. doi:10.1148/ryai.2021200254")

_RSNA_DATA = f"""The RSNA-STR Pulmonary Embolism CT (RSPECT) data set of the RSNA STR Pulmonary
Embolism Detection challenge (Kaggle, 2020): CT pulmonary angiograms annotated per image and per
exam by thoracic radiologists.

**Terms.** The data may be used for non-commercial research and education only, under the
terms of RSNA and the challenge; works that use it, models trained on it included, must cite
it. Weights trained on it carry those terms: check them before any other use.

Cite: {CITATION}"""

_SYNTHETIC_DATA = """Synthetic CT-like series made by `src/make_synthetic_data.py` (found
`synthetic.json` in the training data folder). These weights show that the pipeline works; they
have never seen a real CT and say nothing about real patients. The RSNA-STR PE CT data that the
full recipe trains on is for non-commercial research only and must be cited:
""" + CITATION

_USE = """- Intended use: research on automated pulmonary-embolism detection in CT pulmonary
  angiograms; reproducing and extending the RSNA STR PE challenge's 4th-place approach.
- Not a medical device, not validated for clinical use; no diagnosis or treatment decision may
  rest on its outputs.
- Limits: trained on one challenge's data (scanners, protocols and population of its sites);
  expects one axial CTPA series per study, slices ordered by ImagePositionPatient z; outputs
  are calibrated only as far as the training data's label frequencies allow; exam labels are
  post-processed to satisfy the challenge's consistency rules, which can hide disagreement
  between the models."""


def _training_data(models):
    """Synthetic if any head's training data folder (relative to here) holds synthetic.json."""
    dirs = {m["config"].get("dataset", {}).get("data_dir") for m in models.values() if m["kind"] == "rnn"}
    if any(d and (Path(d) / "synthetic.json").is_file() for d in dirs):
        return _SYNTHETIC_DATA
    return _RSNA_DATA


def _cv_table(models, pairs):
    rows = ["| CNN | head | fold | studies | images | score | post-processed |",
            "|---|---|---|---|---|---|---|"]
    for p in pairs:
        cv = models[p["rnn"]].get("cv") or {}
        fmt = lambda k: f"{cv[k]:.4f}" if isinstance(cv.get(k), (int, float)) else "n/a"  # noqa: E731
        rows.append(f"| {p['cnn']} | {p['rnn']} | {cv.get('fold', 'n/a')} | {cv.get('studies', 'n/a')} | "
                    f"{cv.get('images', 'n/a')} | {fmt('score')} | {fmt('score_postprocessed')} |")
    return "\n".join(rows)


def _models_section(models, pairs):
    first = models[pairs[0]["cnn"]]
    mcfg, inp = first["config"].get("model", {}), first["input"]
    return (f"{len(pairs)} pairs of a slice CNN (timm `{mcfg.get('backbone')}`, {mcfg.get('pool', 'gem')} "
            f"pooling, input {inp['size']} px, R, G, B = {', '.join(inp['channels'])}) and an "
            f"LSTM head over the CNN's per-slice embeddings. Outputs: `{IMAGE_LABEL}` per slice and "
            f"nine exam labels ({', '.join(EXAM_LABELS)}); the pairs' probabilities are averaged "
            "and made consistent by the challenge's rules (post-processing "
            f"`{models[pairs[0]['rnn']]['postprocess']}`).")


def model_card(models, pairs, prior, inference_cfg=None, site=None, onnx=None):
    """The card's text; ``site``: {file name: checked document} of the site files; ``onnx``:
    the manifest's ONNX section."""
    versions = package_versions(PACKAGES)
    lines = [
        "# Model card: RSNA STR pulmonary embolism CNN + LSTM ensemble", "",
        "## Models", "", _models_section(models, pairs), "",
        "## Training data", "", _training_data(models), "",
        "## Cross-validation (weighted log loss, lower is better)", "",
        "Each head's out-of-fold score on its validation folds, from its run's scores.json.", "",
        _cv_table(models, pairs), "",
        "## Label prior (used for studies that cannot be read)", "",
        ", ".join(f"{k} {v:.4f}" for k, v in prior["mean"].items()), "",
        "## Intended use and limits", "", _USE, "",
        "## Software", "",
        f"Python {platform.python_version()}; " + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + f"; code commit {git_commit() or 'unknown'}.", "",
        "## Files", "",
        "`manifest.json` lists every file with its sha256 and the format version; loading checks "
        "them all (see docs/bundle.md).",
    ]
    if inference_cfg:
        lines += ["", f"Exported with tta_flip={inference_cfg.get('tta_flip')}, "
                      f"amp={inference_cfg.get('amp')} (set at load time, not stored in the weights)."]
    card = "\n".join(lines) + "\n"
    card = with_onnx_section(card, onnx) if onnx else card
    return with_site_section(card, site) if site else card


ONNX_HEADING = "## ONNX"


def with_onnx_section(card, onnx):
    """``card`` with the section on the ONNX models of ``onnx`` (the manifest's section) put
    before the site section, if any, else last."""
    versions = ", ".join(f"{k} {v}" for k, v in onnx["versions"].items())
    lines = [ONNX_HEADING, "",
             f"Each model also as ONNX (opset {onnx['opset']}), run by ONNX Runtime without torch "
             f"(`runtime: onnx`, docs/operations.md); exported with {versions}. Each export was "
             "checked against its torch model before it was written: the largest absolute difference "
             f"of its outputs on random and CT-like inputs, at most {onnx['tolerance']}, and the exporter:", ""]
    lines += [f"- `{m['file']}`: {m['max_abs_diff']:.2g}, {m['exporter']}" for m in onnx["models"].values()]
    head, sep, site = card.partition("\n" + SITE_HEADING + "\n")
    return head.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n" + (sep + site if sep else "")


SITE_HEADING = "## Operating points and calibration"


def _count(value):
    return value if isinstance(value, int) and not isinstance(value, bool) else "?"


def _site_lines(docs):
    lines = []
    if OPERATING_POINTS in docs:
        ops = docs[OPERATING_POINTS]
        n = _count((ops.get("source") or {}).get("n_studies"))
        lines += [f"`{OPERATING_POINTS}`: thresholds fixed in advance on the development cross-validation "
                  f"({n} studies), {ops['rule']}:", ""]
        lines += [f"- {label}: " + "; ".join(f"sensitivity >= {pt['target_sensitivity']:.2f} at p >= "
                                               f"{pt['threshold']:.4f}" for pt in points)
                  for label, points in ops["labels"].items()]
        lines.append("")
    if CALIBRATION in docs:
        cal = docs[CALIBRATION]
        lines += [f"`{CALIBRATION}`: {cal['method']} calibration per label, fit on a site's calibration "
                  "split; `inference.py` and `predict_study.py` apply it to the post-processed outputs "
                  "(the `pe_present` map to every image probability) and post-process again. Labels "
                  "not listed are left as they are.", ""]
        lines += [f"- {label}: " + ", ".join(f"{k} {params[k]:.4f}" for k in ("slope", "intercept", "temperature")
                                             if k in params)
                  + f" ({_count(params.get('n'))} studies, {_count(params.get('n_pos'))} positive)"
                  for label, params in cal["labels"].items()] or ["- (no label: predictions unchanged)"]
        lines.append("")
    return lines


def with_site_section(card, docs):
    """``card`` with its site section (the last one) replaced by that of ``docs`` {file name:
    checked document}, or removed when ``docs`` is empty."""
    card = card.split("\n" + SITE_HEADING + "\n", 1)[0].rstrip("\n") + "\n"
    if not docs:
        return card
    return "\n".join([card, SITE_HEADING, "", *_site_lines(docs),
                      "Each is listed with its sha256 in `manifest.json` (docs/validation.md)."]) + "\n"
