"""Export the inference ensemble's models to one shareable folder (safetensors + JSON).

    python src/export_models.py [-c configs/inference.yml] --out DIR [--overwrite] [key=value ...]
        [--operating-points FILE_OR_DIR] [--calibration FILE_OR_DIR]
    python src/export_models.py --from-bundle DIR --calibration FILE_OR_DIR --out NEW_DIR

Takes the CNN + LSTM pairs that inference.py would use (``models`` x ``folds`` from the run
folders, or ``checkpoints``) and writes a model bundle (docs/bundle.md): per model its weights
as .safetensors and a .json that rebuilds it, the label prior, MODEL_CARD.md and manifest.json
with every file's sha256. ``inference.py bundle=DIR`` and ``predict_study.py bundle=DIR`` then
run the same ensemble from the bundle alone. ``--operating-points`` and ``--calibration`` add a
site validation's operating_points.json and calibration.json (each the file, or the folder
holding it), checked, hashed and named in the model card; stage 7 and predict_study.py apply
the calibration. ``--from-bundle`` makes the new bundle from an existing one (verified) instead
of the run folders, adding or replacing those files (docs/validation.md).
"""
from pathlib import Path

from rsna_pe.core import cli
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
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=add)
    site = site_files.given(args.operating_points, args.calibration)
    if args.from_bundle:
        manifest = bundle.derive(args.from_bundle, args.out, site, overwrite=args.overwrite)
    else:
        manifest = bundle.export(resolve_pairs(cfg), args.out, overwrite=args.overwrite, inference_cfg=cfg,
                                 site=site)
    print(f"wrote {args.out}: {len(manifest['pairs'])} model pairs, {len(manifest['files'])} files "
          f"+ {bundle.MANIFEST} (format version {manifest['format_version']})")


if __name__ == "__main__":
    cli.run(main)
