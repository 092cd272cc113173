"""Score submission files against labels: one file, or the cross-validation ensemble of several.

    python src/evaluate.py --labels data/test_labels.csv SUB.csv [SUB2.csv ...]
                           [--prior data/train.csv] [--json scores.json]

Each file is scored as given on the studies it covers. With several files (e.g. each fold
run's oof.csv) the predictions are averaged per id over the files that predict it,
post-processed, and scored: the cross-validation score.
"""
import argparse
import json

import numpy as np
import pandas as pd

from rsna_pe import metric
from rsna_pe.core.cli import run
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import atomic_write_text, read_csv
from rsna_pe.core.labels import LABELS


def read_labels(path):
    df = read_csv(path, ["StudyInstanceUID", "SOPInstanceUID", *LABELS],
                  dtype={"StudyInstanceUID": str, "SeriesInstanceUID": str, "SOPInstanceUID": str})
    return metric.labels_from_train_csv(df, source=str(path))


def read_submission(path):
    df = read_csv(path, ["id", "label"], dtype={"id": str})
    dup = df["id"][df["id"].duplicated()]
    if len(dup):
        raise PipelineError(f"{path}: duplicate id {dup.iloc[0]}")
    return df


def average_submissions(frames):
    """Mean label per id over the frames that hold it (the union of ids)."""
    both = pd.concat([f[["id", "label"]] for f in frames], ignore_index=True)
    both["label"] = pd.to_numeric(both["label"], errors="coerce")
    return both.groupby("id", sort=False, as_index=False)["label"].mean()


def ensemble_result(frames, labels, source):
    """Average, post-process the covered studies (as inference does), and score."""
    avg = average_submissions(frames)
    part = metric.subset_labels(labels, metric.covered_studies(avg, labels, source))
    exam_pred, img_pred = metric.from_submission(avg, part.study_ids, part.sops, source)
    exam_pred = metric.postprocess(exam_pred, img_pred)
    return metric.score_submission(metric.to_submission(part.study_ids, exam_pred, part.sops, img_pred),
                                   labels, source)


def prior_result(prior, labels, covered):
    part = metric.subset_labels(labels, covered)
    return metric.score_submission(metric.prior_submission(prior, part.study_ids, part.sops), part, "prior")


def _num(x):
    return None if x is None or not np.isfinite(x) else float(x)  # JSON has no NaN


def summary(name, res, prior, labels):
    """The JSON-ready numbers of one scored submission (plus the prior's on its studies)."""
    out = {"name": name, **{k: res[k] for k in ("score", "n_studies", "n_images", "n_studies_total",
                                                 "n_unmatched", "n_inconsistent")}}
    out["per_label"] = {r.label: {"logloss": _num(r.logloss), "auc": _num(r.auc),
                                  "auc_positive": _num(r.auc_positive)}
                        for r in res["per_label"].itertuples()}
    if prior is not None:
        pres = prior_result(prior, labels, res["covered"])
        out["prior_score"] = pres["score"]
        for r in pres["per_label"].itertuples():
            out["per_label"][r.label]["prior_logloss"] = _num(r.logloss)
    return out


def _fmt(x, width=8):
    return f"{'-':>{width}}" if x is None else f"{x:>{width}.4f}"


def print_report(report):
    rows = report["files"] + ([report["cross_validation"]] if "cross_validation" in report else [])
    prior = report["prior"] is not None
    width = max(24, *(len(s["name"]) for s in rows)) + 1
    print(f"\n{'file':<{width}}{'studies':>8}{'images':>10}{'score':>9}" + (f"{'prior':>9}" if prior else "")
          + f"{'inconsistent':>14}")
    for s in rows:
        line = f"{s['name']:<{width}}{s['n_studies']:>8}{s['n_images']:>10} {_fmt(s['score'])}"
        print(line + (f" {_fmt(s['prior_score'])}" if prior else "") + f"{s['n_inconsistent']:>14}")
    for s in rows:
        if s["n_studies"] < s["n_studies_total"]:
            print(f"note: {s['name']} covers {s['n_studies']} of {s['n_studies_total']} studies of the "
                  "labels; only those are scored")
        if s["n_unmatched"]:
            print(f"note: {s['name']} has {s['n_unmatched']} rows matching no study of the labels (ignored)")
    print("inconsistent = studies breaking a consistency rule (docs/score.md)")

    s = rows[-1]
    print(f"\nper label ({'cross-validation' if 'cross_validation' in report else s['name']}):")
    print(f"{'label':<24}{'logloss':>9}{'auc':>9}{'auc_pos':>9}" + (f"{'prior':>9}" if prior else ""))
    for label, r in s["per_label"].items():
        line = f"{label:<24} {_fmt(r['logloss'])} {_fmt(r['auc'])} {_fmt(r['auc_positive'])}"
        print(line + (f" {_fmt(r['prior_logloss'])}" if prior else ""))
    print(f"{'weighted score':<24} {_fmt(s['score'])} {'':>8} {'':>8}" + (f" {_fmt(s['prior_score'])}" if prior else ""))
    print("auc_pos = AUC among the PE-positive studies of the truth (neither negative nor indeterminate)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("submissions", nargs="+", metavar="SUB.csv", help="submission files (id,label)")
    p.add_argument("--labels", required=True, help="labels in train.csv layout, e.g. data/test_labels.csv")
    p.add_argument("--prior", metavar="TRAIN_CSV",
                   help="also score the label prior (training mean of each label) on the same studies")
    p.add_argument("--json", metavar="OUT", help="write the numbers to this JSON file")
    args = p.parse_args(argv)

    labels = read_labels(args.labels)
    print(f"labels: {args.labels} ({len(labels.study_ids)} studies, {sum(len(s) for s in labels.sops)} images)")
    prior = None
    if args.prior:
        prior = metric.prior_prediction(labels if args.prior == args.labels else read_labels(args.prior))
        print(f"prior: training mean of each label in {args.prior}, scored as-is")

    report = {"labels": args.labels, "prior": args.prior, "files": []}
    frames = [read_submission(path) for path in args.submissions]
    for path, df in zip(args.submissions, frames):
        report["files"].append(summary(path, metric.score_submission(df, labels, source=path), prior, labels))
    if len(frames) > 1:
        res = ensemble_result(frames, labels, "average of " + ", ".join(args.submissions))
        report["cross_validation"] = summary(f"average of {len(frames)} files, post-processed", res, prior, labels)

    print_report(report)
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    run(main)
