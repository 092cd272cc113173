"""Export the inference ensemble's models to one shareable folder (safetensors + JSON).

    python src/export_models.py [-c configs/inference.yml] --out DIR [--overwrite] [key=value ...]

Takes the CNN + LSTM pairs that inference.py would use (``models`` x ``folds`` from the run
folders, or ``checkpoints``) and writes a model bundle (docs/bundle.md): per model its weights
as .safetensors and a .json that rebuilds it, the label prior, MODEL_CARD.md and manifest.json
with every file's sha256. ``inference.py bundle=DIR`` and ``predict_study.py bundle=DIR`` then
run the same ensemble from the bundle alone.
"""
from pathlib import Path

from rsna_pe.core import cli
from rsna_pe.infer import bundle
from rsna_pe.infer.pairs import resolve_pairs


def main(argv=None):
    def add(p):
        p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
        p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    cfg, args = cli.parse(__doc__.splitlines()[0], default="inference.yml", argv=argv, add_args=add)
    manifest = bundle.export(resolve_pairs(cfg), args.out, overwrite=args.overwrite, inference_cfg=cfg)
    print(f"wrote {args.out}: {len(manifest['pairs'])} model pairs, {len(manifest['files'])} files "
          f"+ {bundle.MANIFEST}")


if __name__ == "__main__":
    cli.run(main)
