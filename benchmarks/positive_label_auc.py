"""Why a chronicity label ranks positive exams as it does, on a compare_options sweep.

    python benchmarks/positive_label_auc.py WORKSPACE --head combined_pool [--seeds 0 1 2]
        [--labels chronic_pe acute_and_chronic_pe] [--boot 2000] [--cnn] [--json OUT]

WORKSPACE is a compare_options workspace (data/ and seed_<s>/); the head's demo config
(configs/demo/train_rnn/rexnet200_<head>.yml) names its fold csv, folds, dumps and CNN run.

For each seed, the cross-validation ensemble of the head's three oof.csv (averaged and
post-processed as evaluate.py does) among the PE-positive exams: the AUC of each label's output
(the options table's number) with a 95% bootstrap interval (exams resampled, fixed seed); the
same output's AUC of the label's exams against each other age class alone (acute only, chronic
only, acute and chronic: which exams it confuses them with); and the median of the head's
P(positive) = (1 - P(negative)) (1 - P(indeterminate)) on the label's exams and the others (a
chronicity output is P(positive) x P(label | positive): missed clots would rank exams low
whatever their age).

With ``--cnn`` it also reads the head's CNN's dumps (the validation series of each fold,
whose logits the CNN did not train on) and the phantom's own record of each clot's age
(``synthetic.plan`` with the sweep's data parameters, from data/synthetic.json): how well a
slice's chronic output (P(chronic_pe) + P(acute_and_chronic_pe) of the CNN's logits: both are
1 on a chronic clot's slice in some exam) tells chronic-clot slices from acute-clot ones, and
whether a pooling that asks for both kinds in one series separates acute-and-chronic exams from
chronic-only ones: that output's minimum over the slices the CNN calls PE (an acute clot's low
value beside a chronic clot's high ones), against its maximum, a pooling the head has.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
import evaluate  # noqa: E402  (the stage's own label and submission readers)
from rsna_pe import metric  # noqa: E402
from rsna_pe.core import paths  # noqa: E402
from rsna_pe.core.config import load_config  # noqa: E402
from rsna_pe.core.io import atomic_write_json  # noqa: E402
from rsna_pe.core.labels import EXAM_LABELS  # noqa: E402
from rsna_pe.data.folds import read_fold_csv, val_fold_ids  # noqa: E402
from rsna_pe.infer.calibration import sigmoid  # noqa: E402
from rsna_pe.synthetic.dataset import MANIFEST  # noqa: E402
from rsna_pe.synthetic.plan import plan  # noqa: E402

NOT_PLAN = ("generator", "version", "complete", "scanner")  # manifest entries plan() does not take


def head_config(head):
    return load_config(REPO / "configs" / "demo" / "train_rnn" / f"rexnet200_{head}.yml")


def fold_csv(seed_dir, cfg):
    return seed_dir / paths.fold_csv(cfg["dataset"]["data_dir"], cfg["jpeg_size"], crop=paths.crop_of(cfg))


def cv_predictions(seed_dir, cfg):
    """(truth, predictions) of the exams covered by the head's oof.csv of every fold, (N, 9)."""
    labels = evaluate.read_labels(fold_csv(seed_dir, cfg))
    oofs = [paths.run_dir(seed_dir / cfg["output_dir"], cfg["run_name"], k) / "oof.csv"
            for k in range(cfg["dataset"]["k_fold"])]
    if not all(p.is_file() for p in oofs):
        raise SystemExit(f"{seed_dir}: no oof.csv of {cfg['run_name']} for every fold")
    avg = evaluate.average_submissions([evaluate.read_submission(p) for p in oofs])
    part = metric.subset_labels(labels, metric.covered_studies(avg, labels, str(oofs[0])))
    exam_pred, img_pred = metric.from_submission(avg, part.study_ids, part.sops, str(oofs[0]))
    return np.asarray(part.exam_true, float), metric.postprocess(exam_pred, img_pred)


def boot_interval(y, p, n, rng):
    aucs = []
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        if 0 < y[i].sum() < len(i):
            aucs.append(roc_auc_score(y[i], p[i]))
    return [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]


def age_class(lab):
    """An exam's class from its labels (a mapping): not_positive (negative or indeterminate),
    acute_and_chronic, chronic_only or acute_only."""
    if lab["negative_exam_for_pe"] or lab["indeterminate"]:
        return "not_positive"
    return ("acute_and_chronic" if lab["acute_and_chronic_pe"] else
            "chronic_only" if lab["chronic_pe"] else "acute_only")


def age_classes(truth):
    """age_class of each row of an (N, 9) exam-label array."""
    return np.array([age_class(dict(zip(EXAM_LABELS, row))) for row in truth])


def analyse(truth, pred, label, n_boot, rng):
    neg, ind = EXAM_LABELS.index("negative_exam_for_pe"), EXAM_LABELS.index("indeterminate")
    pos = (truth[:, neg] == 0) & (truth[:, ind] == 0)
    k = EXAM_LABELS.index(label)
    y, p = truth[pos, k], pred[pos, k]
    p_pos = (1 - pred[pos, neg]) * (1 - pred[pos, ind])
    cls = age_classes(truth[pos])
    against = {}
    for c in sorted(set(cls[y == 0])):
        keep = (y == 1) | (cls == c)
        against[c] = float(roc_auc_score(y[keep], p[keep]))
    return dict(n_positive=int(pos.sum()), n_label=int(y.sum()),
                auc=float(roc_auc_score(y, p)), auc_95=boot_interval(y, p, n_boot, rng),
                auc_against=against,
                p_positive_median_label=float(np.median(p_pos[y == 1])),
                p_positive_median_others=float(np.median(p_pos[y == 0])))


def slice_ages(data_dir):
    """{sop uid: set of clot kinds drawn on it} and {study uid: exam age class} of the training
    studies, from the phantom's plan."""
    params = json.loads((data_dir / MANIFEST).read_text())
    specs = plan(**{k: v for k, v in params.items() if k not in NOT_PLAN})
    ages, exams = {}, {}
    for spec in specs:
        if spec.split != "train":
            continue
        kinds = [set() for _ in range(spec.n_slices)]
        for e in spec.emboli:
            for k in range(e.k0, e.k1 + 1):
                kinds[k].add(e.kind)
        ages.update({spec.sop_uid(k): kinds[k] for k in range(spec.n_slices)})
        exams[spec.study_uid] = age_class(spec.labels)
    return ages, exams


def cnn_slices(seed_dir, cfg, ages, exams):
    """Per validation slice of a positive exam: the head's CNN's PE probability, its chronic
    output and the clot kinds on it; grouped by study."""
    folds = read_fold_csv(fold_csv(seed_dir, cfg))
    fold_of = folds.drop_duplicates("StudyInstanceUID").set_index("StudyInstanceUID")["fold"]
    ds, studies = cfg["dataset"], {}
    for k in range(ds["k_fold"]):
        fold_dir = paths.dump_dir(seed_dir / ds["dump_root"], ds["cnn_run"], k)
        valid = val_fold_ids(k, ds["k_fold"])
        names = json.loads((fold_dir / "record.json").read_text())["params"]["logits"]
        i_pe, i_chr, i_ac = (names.index(x) - len(names)
                             for x in ("pe_present_on_image", "chronic_pe", "acute_and_chronic_pe"))
        for npz in fold_dir.glob("*/*.npz"):
            study = npz.parent.name
            if fold_of.get(study) not in valid or exams.get(study, "not_positive") == "not_positive":
                continue
            z = np.load(npz, allow_pickle=False)
            sig = sigmoid(z["embeddings"][:, -len(names):])
            studies[study] = (sig[:, i_pe], sig[:, i_chr] + sig[:, i_ac],
                              [ages.get(str(u), set()) for u in z["sop"]])
    return studies


def slice_report(studies, exams):
    chronic_out, is_chronic = [], []
    low, high, cls = [], [], []
    for study, (pe, chron, kinds) in studies.items():
        for c, kd in zip(chron, kinds):
            if len(kd) == 1:  # a slice showing clots of one age
                chronic_out.append(c)
                is_chronic.append("chronic" in kd)
        called = chron[pe > 0.5]
        low.append(float(called.min()) if len(called) else 1.0)
        high.append(float(called.max()) if len(called) else 0.0)
        cls.append(exams[study])
    y, cls, low, high = np.array(is_chronic), np.array(cls), np.array(low), np.array(high)
    both = np.isin(cls, ["acute_and_chronic", "chronic_only"])
    mixed = cls[both] == "acute_and_chronic"
    return dict(n_slices_acute=int((~y).sum()), n_slices_chronic=int(y.sum()),
                slice_auc_chronic_vs_acute=float(roc_auc_score(y, chronic_out)),
                min_auc_mixed_vs_chronic_only=float(roc_auc_score(mixed, -low[both])),
                max_auc_mixed_vs_chronic_only=float(roc_auc_score(mixed, high[both])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--head", default="combined_pool")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--labels", nargs="+", default=["chronic_pe", "acute_and_chronic_pe"],
                    choices=EXAM_LABELS)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--cnn", action="store_true", help="also read the head's CNN's dumps")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    out = {}
    print(f"head {a.head}, cross-validation, among PE-positive exams")
    print(f"{'label':22} seed  n_pos n_lab   AUC  95% interval  P(pos) median: label / others"
          "  AUC against one class alone")
    cfg = head_config(a.head)
    for label in a.labels:
        for s in a.seeds:
            r = analyse(*cv_predictions(a.workspace / f"seed_{s}", cfg), label, a.boot, rng)
            out.setdefault(label, {})[s] = r
            print(f"{label:22} {s:4d} {r['n_positive']:6d} {r['n_label']:5d} {r['auc']:5.2f}"
                  f"  {r['auc_95'][0]:.2f}-{r['auc_95'][1]:.2f}"
                  f"  {r['p_positive_median_label']:.3f} / {r['p_positive_median_others']:.3f}  "
                  + ", ".join(f"{c} {v:.2f}" for c, v in r["auc_against"].items()))
        vals = [out[label][s] for s in a.seeds]
        against = {c: np.mean([v["auc_against"][c] for v in vals]) for c in vals[0]["auc_against"]}
        print(f"{label:22} mean over seeds: AUC {np.mean([v['auc'] for v in vals]):.3f}; against "
              + ", ".join(f"{c} {v:.3f}" for c, v in against.items()))
    if a.cnn:
        ages, exams = slice_ages(a.workspace / "data")
        cnn = cfg["dataset"]["cnn_run"]
        print(f"\nCNN {cnn}, validation slices of positive exams (phantom's record of clot ages)")
        for s in a.seeds:
            r = slice_report(cnn_slices(a.workspace / f"seed_{s}", cfg, ages, exams), exams)
            out.setdefault("cnn_" + cnn, {})[s] = r
            print(f"seed {s}: chronic output, chronic-clot slices ({r['n_slices_chronic']}) against"
                  f" acute-clot slices ({r['n_slices_acute']}): AUC {r['slice_auc_chronic_vs_acute']:.2f};"
                  f" acute-and-chronic against chronic-only exams by that output's minimum over the"
                  f" slices the CNN calls PE (lower first): AUC {r['min_auc_mixed_vs_chronic_only']:.2f},"
                  f" by its maximum: {r['max_auc_mixed_vs_chronic_only']:.2f}")
    if a.json:
        atomic_write_json(a.json, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
