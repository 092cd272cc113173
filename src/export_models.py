"""Export the inference ensemble's models to one shareable folder (safetensors, ONNX + JSON).

    python src/export_models.py [-c configs/inference.yml] --out DIR [--overwrite] [key=value ...]
        [--operating-points FILE_OR_DIR] [--calibration FILE_OR_DIR] [--no-onnx]
    python src/export_models.py --from-bundle DIR --calibration FILE_OR_DIR --out NEW_DIR
    python src/export_models.py --from-bundle DIR --onnx --out NEW_DIR

Takes the CNN + LSTM pairs that inference.py would use (``models`` x ``folds`` from the run
folders, or ``checkpoints``) and writes a model bundle (docs/bundle.md): per model its weights
as .safetensors and a .json that rebuilds it, the label prior, MODEL_CARD.md and manifest.json
with every file's sha256. ``inference.py bundle=DIR`` and ``predict_study.py bundle=DIR`` then
run the same ensemble from the bundle alone. ``--operating-points`` and ``--calibration`` add a
site validation's operating_points.json and calibration.json (each the file, or the folder
holding it), checked, hashed and named in the model card; stage 7 and predict_study.py apply
the calibration. ``--from-bundle`` makes the new bundle from an existing one (verified) instead
of the run folders, adding or replacing those files (docs/validation.md).
Each model is also written as ONNX (``<name>.onnx``, listed and hashed in the manifest with its
opset and exporter versions), checked against the torch model before it is written
(rsna_pe.infer.onnx_export): ``runtime=onnx`` then runs the bundle with ONNX Runtime on a CPU
without torch. ``--no-onnx`` leaves them out; ``--from-bundle DIR --onnx`` adds them to a bundle
that has none (one made before ONNX export) and keeps them otherwise, as every other file.
No int8 models are written: quantised CNNs moved the demo's test score by more than 1% for most
calibrations tried (docs/speed.md).
"""
import argparse
from pathlib import Path

from rsna_pe.core import cli
from rsna_pe.core.errors import ConfigError
from rsna_pe.infer import bundle, site_files
from rsna_pe.infer.pairs import resolve_pairs


def main(argv=None):
    def add(p):
        p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
        p.add_argument("--operating-points", type=Path, metavar="FILE_OR_DIR",
                       help="operating_points.json (validate_site.py operating-points), or its folder")
        p.add_argument("--calibration", type=Path, metavar="FILE_OR_DIR",
                       help="calibration.json (validate_site.py --calibrate-split), or its folder")
        p.add_argument("--from-bundle", type=Path, metavar="DIR",
                       help="copy this bundle's models instead of the run folders' (adds the files above)")
        p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=None,
                       help="write each model as ONNX too (default from run folders; with --from-bundle: "
                            "add them to a bundle without them)")
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=add)
    site = site_files.given(args.operating_points, args.calibration)
    if args.from_bundle:
        if args.onnx is False:
            raise ConfigError("--no-onnx: --from-bundle keeps the source bundle's files as they are")
        manifest = bundle.derive(args.from_bundle, args.out, site, overwrite=args.overwrite,
                                 add=bool(args.onnx))
    else:
        manifest = bundle.export(resolve_pairs(cfg), args.out, overwrite=args.overwrite, inference_cfg=cfg,
                                 site=site, onnx=args.onnx is not False)
    onnx = manifest.get("onnx")
    print(f"wrote {args.out}: {len(manifest['pairs'])} model pairs, {len(manifest['files'])} files "
          f"+ {bundle.MANIFEST} (format version {manifest['format_version']}"
          + (f"; ONNX opset {onnx['opset']}, largest difference to torch "
             f"{max(m['max_abs_diff'] for m in onnx['models'].values()):.2g})" if onnx else "; no ONNX)"))


if __name__ == "__main__":
    cli.run(main)
