"""Print the demo's scores side by side: test, cross-validation, label-prior baseline.

    python scripts/demo_summary.py TEST_JSON CV_JSON   (both written by src/evaluate.py --json)
"""
import json
import sys


def main(test_json, cv_json):
    test, cv = json.load(open(test_json)), json.load(open(cv_json))
    t, c = test["files"][0], cv.get("cross_validation", cv["files"][0])
    print("\nweighted log loss (lower is better)      model    prior   model/prior")
    for name, s in (("test set (inference on raw DICOM)", t), ("cross-validation (out-of-fold)", c)):
        print(f"{name:<38} {s['score']:8.4f} {s['prior_score']:8.4f} {s['score'] / s['prior_score']:9.2f}")
    ok = t["score"] <= 0.7 * t["prior_score"]
    print(f"\ntest score is {t['score'] / t['prior_score']:.2f}x the prior baseline "
          f"({'learned: below 0.7x' if ok else 'NOT below the 0.7x target'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
