"""Write a synthetic CT pulmonary-angiogram data set in the Kaggle RSNA STR PE layout.

    python src/make_synthetic_data.py OUT_DIR [--profile NAME] [--n-train 40] [--n-test 10]
        [--slices 30 50] [--slice-spacing MM] [--matrix 512] [--seed 0] [--workers N]
        [--compressed-fraction 0.3] [--positive-fraction 1/3] [--hex-ids] [--overwrite]
        [scanner shift options]

OUT_DIR gets train.csv, test.csv, sample_submission.csv, test_labels.csv (the test truth),
train/ and test/ DICOM folders; see rsna_pe.synthetic for what the images hold. ``--profile``
takes the sizes and seed of a named set in configs/profiles.yml (demo, bench, bench_thin);
options given as well override it. The scanner shift options image the same studies as
another site's scanner would (default: no shift).
"""
import argparse
import time

from rsna_pe.core.cli import run
from rsna_pe.synthetic import ScannerShift, generate
from rsna_pe.synthetic.profiles import PROFILES_FILE, load_profile


def _fraction(text):
    """A number, or a ratio such as 1/3 (the default's exact value)."""
    num, _, den = text.partition("/")
    try:
        return float(num) / float(den) if den else float(num)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a fraction: {text}") from None


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", help="folder to write (e.g. data)")
    p.add_argument("--profile", metavar="NAME",
                   help=f"sizes and seed of a named set in {PROFILES_FILE.name} (demo, bench, "
                        "bench_thin); the options below override them")
    p.add_argument("--n-train", type=int, default=40, help="train studies (default 40)")
    p.add_argument("--n-test", type=int, default=10, help="test studies (default 10)")
    p.add_argument("--slices", type=int, nargs=2, default=(30, 50), metavar=("MIN", "MAX"),
                   help="slices per series, drawn uniformly (default 30 50)")
    p.add_argument("--slice-spacing", type=float, metavar="MM",
                   help="contiguous thin slices MM apart over a slab from the ventricles into "
                        "the pulmonary trunk (default: spread over the whole chest)")
    p.add_argument("--matrix", type=int, default=512,
                   help="image matrix (default 512; a few series get 7/8 or 9/8 of it)")
    p.add_argument("--seed", type=int, default=0, help="same seed, same files (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--compressed-fraction", type=float, default=0.3,
                   help="share of series stored JPEG Lossless / JPEG 2000 / RLE (default 0.3)")
    p.add_argument("--positive-fraction", type=_fraction, default=1 / 3, metavar="F",
                   help="share of studies with emboli (default 1/3, as in the competition data)")
    p.add_argument("--hex-ids", action="store_true",
                   help="12-hex-digit study/series/image ids as in the competition data "
                        "(e.g. 6897fa9de148) instead of DICOM UIDs")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a synthetic set already in OUT_DIR (train/, test/, the csvs)")
    _add_scanner_args(p.add_argument_group("scanner shift (a second site; default: none)"))
    # A profile's values become the defaults, so that an option given as well wins.
    first, _ = p.parse_known_args(argv)
    if first.profile:
        p.set_defaults(**load_profile(first.profile))
    return p.parse_args(argv)


def _add_scanner_args(g):
    g.add_argument("--noise-scale", type=float, default=1.0, metavar="F",
                   help="image noise times F (default 1)")
    g.add_argument("--hu-offset", type=float, default=0.0, metavar="HU",
                   help="added to every HU, a CT-number calibration error (default 0)")
    g.add_argument("--thickness-factor", type=float, default=1.0, metavar="F",
                   help="slices F times thicker than their spacing, blending in their "
                        "neighbours (default 1)")
    g.add_argument("--sharpen", type=float, default=0.0, metavar="A",
                   help="unsharp-mask amount of a sharper reconstruction kernel (default 0)")
    g.add_argument("--manufacturer", help="Manufacturer tag (default SYNTHETIC)")
    g.add_argument("--model", help="ManufacturerModelName tag (default: none)")
    g.add_argument("--kvp", type=float, help="KVP tag (default: 100 or 120 per study)")
    g.add_argument("--kernel", help="ConvolutionKernel tag (default: none)")


def scanner_shift(args):
    return ScannerShift(noise_scale=args.noise_scale, hu_offset=args.hu_offset,
                        thickness_factor=args.thickness_factor, sharpen=args.sharpen,
                        manufacturer=args.manufacturer, model=args.model, kvp=args.kvp,
                        kernel=args.kernel)


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    out = generate(args.out_dir, args.n_train, args.n_test, slices=args.slices,
                   matrix=args.matrix, seed=args.seed, workers=args.workers,
                   compressed_fraction=args.compressed_fraction,
                   positive_fraction=args.positive_fraction, hex_ids=args.hex_ids,
                   overwrite=args.overwrite, scanner=scanner_shift(args),
                   slice_spacing=args.slice_spacing)
    print(f"{out.root}: {len(out.train)} train and {len(out.test_labels)} test images "
          f"in {time.time() - start:.1f} s")


if __name__ == "__main__":
    run(main)
