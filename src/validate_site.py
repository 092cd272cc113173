"""Site validation: how well the models do on a site's studies, with intervals, operating points
fixed in advance, subgroups and calibration (docs/validation.md).

    python src/validate_site.py --labels LABELS.csv PREDICTIONS --out DIR
        [--operating-points FILE_OR_DIR] [--calibrate-split FRACTION] [--seed N]
        [--subgroups CSV] [--images TEST_CSV] [--n-boot 2000] [--min-group 20]
    python src/validate_site.py operating-points --labels TRAIN_CSV OOF.csv [OOF.csv ...] --out DIR
    python src/validate_site.py acquisition SPLIT_DIR --out acquisition.csv

PREDICTIONS: a stage-7 submission.csv or a predict_study.py output folder (<x>/prediction.json).
DIR gets metrics.json, report.md, report.html, roc.png, reliability.png (forest.png with
subgroups, calibration.png and calibration.json with --calibrate-split).
"""
import argparse
import sys

from rsna_pe.core.cli import run
from rsna_pe.core.io import atomic_to_csv
from rsna_pe.validation import acquisition, calibration, site, thresholds
from rsna_pe.validation.report import f3, with_ci


def _validate_parser():
    p = argparse.ArgumentParser(prog="validate_site.py", description=__doc__.split("\n\n")[0],
                                epilog="other commands (each with -h): operating-points OOF.csv ... "
                                       "(operating_points.json from the development out-of-fold "
                                       "files), acquisition SPLIT_DIR (the scanner fields per study)")
    p.add_argument("predictions", help="submission.csv, or a folder of <x>/prediction.json")
    p.add_argument("--labels", required=True, help="labels csv: StudyInstanceUID and exam labels")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--operating-points", metavar="FILE_OR_DIR",
                   help="operating_points.json, or the run/bundle folder holding it")
    p.add_argument("--calibrate-split", type=float, metavar="FRACTION",
                   help="fit calibration on this share of the studies, report the rest before/after")
    p.add_argument("--calibration-method", choices=calibration.METHODS, default="platt",
                   help="platt (default: slope and intercept) or temperature (one parameter)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and calibration split (default 0)")
    p.add_argument("--subgroups", metavar="CSV", help="StudyInstanceUID + grouping columns "
                   "(default: the acquisition fields of prediction.json files, if any)")
    p.add_argument("--images", metavar="CSV", help="StudyInstanceUID,SOPInstanceUID of the images "
                   "(e.g. data/test.csv): ties a submission's image rows to studies when the labels "
                   "are per study")
    p.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (default 2000)")
    p.add_argument("--min-group", type=int, default=site.DEFAULT_MIN_GROUP,
                   help=f"smaller subgroups are pooled (default {site.DEFAULT_MIN_GROUP} studies)")
    return p


def _print_summary(res, out):
    print(f"{res['inputs']['n_studies']} studies; labels scored: {', '.join(res['inputs']['labels_scored'])}")
    for note in res["notes"]:
        print(f"note: {note}")
    print(f"{'label':<24}{'n':>5}{'pos':>5}  {'AUC [95% CI]':<24}{'Brier':>7}{'ECE':>7}")
    for label, m in res["labels"].items():
        print(f"{label:<24}{m['n']:>5}{m['n_pos']:>5}  {with_ci(m['auc'], m['auc_ci']):<24}"
              f"{f3(m['brier']):>7}{f3(m['ece']):>7}")
        for op in m["fixed"]:
            print(f"  fixed point (dev sensitivity {f3(op['target_sensitivity'])}, p >= {f3(op['threshold'])}): "
                  f"sensitivity {f3(op['sensitivity']['value'])}, specificity {f3(op['specificity']['value'])}")
    cs = res["competition_score"]
    print(f"competition score: {f3(cs['value'])} ({cs['kind']})" if cs["value"] is not None
          else f"competition score: not computed ({cs['note']})")
    if res["calibration"]:
        for label, c in res["calibration"]["labels"].items():
            print(f"calibration {label}: held-out ECE {f3(c['before']['ece'])} -> {f3(c['after']['ece'])}, "
                  f"Brier {f3(c['before']['brier'])} -> {f3(c['after']['brier'])}")
    print(f"wrote {out}/metrics.json, report.md, report.html and the plots")


def validate_main(argv):
    args = _validate_parser().parse_args(argv)
    res = site.run(args.labels, args.predictions, args.out, operating_points=args.operating_points,
                   calibrate_fraction=args.calibrate_split, seed=args.seed, subgroups_csv=args.subgroups,
                   n_boot=args.n_boot, min_group=args.min_group, images_csv=args.images,
                   method=args.calibration_method)
    _print_summary(res, args.out)


def operating_points_main(argv):
    p = argparse.ArgumentParser(prog="validate_site.py operating-points",
                                description="operating_points.json from the development out-of-fold files")
    p.add_argument("oof", nargs="+", help="the heads' oof.csv files (output/train_rnn/*/fold_*/oof.csv)")
    p.add_argument("--labels", required=True, help="their labels, train.csv layout (e.g. data/train.csv)")
    p.add_argument("--out", required=True, help="a run or bundle folder (gets operating_points.json), or a file")
    p.add_argument("--targets", type=float, nargs="+", default=list(thresholds.DEFAULT_TARGETS),
                   help="target sensitivities (default 0.9 0.95)")
    args = p.parse_args(argv)
    doc = thresholds.from_oof(args.oof, args.labels, args.targets)
    path = thresholds.write(doc, args.out)
    for label, points in doc["labels"].items():
        print(label + ": " + "; ".join(f"sensitivity >= {f3(pt['target_sensitivity'])}: p >= {pt['threshold']:.4f} "
                                       f"(dev sens. {f3(pt['dev_sensitivity'])}, spec. {f3(pt['dev_specificity'])})"
                                       for pt in points))
    print(f"wrote {path} ({doc['source']['n_studies']} development studies)")


def acquisition_main(argv):
    p = argparse.ArgumentParser(prog="validate_site.py acquisition",
                                description="the scanner fields of every study of a split folder, as a subgroup csv")
    p.add_argument("split_dir", help="a folder of <study>/<series>/*.dcm (e.g. data/test)")
    p.add_argument("--out", required=True, help="csv to write")
    args = p.parse_args(argv)
    df = acquisition.acquisition_table(args.split_dir)
    atomic_to_csv(df, args.out)
    print(f"wrote {args.out} ({len(df)} studies)")


COMMANDS = {"operating-points": operating_points_main, "acquisition": acquisition_main}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return validate_main(argv)


if __name__ == "__main__":
    run(main)
