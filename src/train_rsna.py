"""Train one network (CNN, stage 3, or RNN, stage 6) for one fold.

    python src/train_rsna.py -c configs/train_cnn/rexnet200_bce.yml dataset.fold=0
    torchrun --nproc_per_node=4 src/train_rsna.py -c ... dataset.fold=0   # DDP

The run folder is output_dir/<config stem>/fold_<k>, with ``record.json`` (also in every
checkpoint: settings, input records, label order of the outputs, versions). Rerunning resumes
an unfinished run and does nothing for a finished one; a run made from other inputs or
settings stops with a one-line error until ``overwrite=true`` trains it again from scratch.
"""
from rsna_pe.core.cli import parse, run
from rsna_pe.train.engine import train


def main(argv=None):
    cfg, _ = parse(__doc__.splitlines()[0], argv=argv)
    return train(cfg)


if __name__ == "__main__":
    run(main)
