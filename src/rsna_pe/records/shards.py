"""Splitting a per-series stage (1: JPEGs, 4: npz) over processes, and its rerun rule per shard.

``shard=K/N`` takes every N-th series of the sorted (study, series) list, starting at K
(0-based); ``''`` takes all. ``shard=auto`` takes K/N from the launcher, only where it started
one process per shard: torchrun (RANK, WORLD_SIZE) or an srun step (SLURM_PROCID, SLURM_NTASKS
and SLURM_STEP_ID). Inside an sbatch batch script but outside srun (SLURM_NTASKS=N, no step)
``auto`` is an error rather than all: N plain calls there would each write every series.
Anywhere else ``auto`` means all.

Shards write disjoint series and their own logs (``errors.shard-K-of-N.csv``; unsharded
``errors.csv``), which a rerun of that shard replaces. Each output carries the digest of the
set's record it was made under, so a shard finds its own stale outputs without help. Only
shard 0 (or an unsharded run) writes or replaces ``record.json``; other shards check the one
on disk and otherwise proceed, in any order.
"""
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ConfigError, PipelineError
from . import provenance

_SPEC = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self):
        return f"{self.index}/{self.count}"


def from_env(env=None):
    """The launcher's shard (torchrun, then an srun step), or None where there is none."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        rank, size = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif int(env.get("SLURM_NTASKS") or 1) > 1:
        if "SLURM_STEP_ID" not in env:
            raise PipelineError(
                f"shard=auto: SLURM_NTASKS={env['SLURM_NTASKS']} but no srun step (SLURM_STEP_ID "
                "unset), so one process would do every series; launch it with srun (one task per "
                "shard) or give shard=K/N, or shard='' for all")
        rank, size = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    else:
        return None
    return _checked(rank, size, f"auto ({rank}/{size} from the environment)")


def parse(spec, env=None):
    """``''`` -> None (all series), ``'K/N'`` -> Shard(K, N), ``'auto'`` -> from_env(env)."""
    spec = str(spec or "").strip()
    if spec == "":
        return None
    if spec == "auto":
        return from_env(env)
    m = _SPEC.match(spec)
    if not m:
        raise ConfigError(f"shard={spec}: expected K/N (0 <= K < N), auto or '' for all")
    return _checked(int(m.group(1)), int(m.group(2)), spec)


def _checked(index, count, spec):
    if not 0 <= index < count:
        raise ConfigError(f"shard={spec}: expected K/N with 0 <= K < N")
    return None if count == 1 else Shard(index, count)


def take(keys, shard):
    """This shard's part of ``keys`` (sorted first, so every shard sees the same list)."""
    keys = sorted(keys)
    return keys if shard is None else keys[shard.index::shard.count]


def log_path(root, stem, shard, ext=".csv"):
    """``<stem>.csv`` unsharded, ``<stem>.shard-K-of-N.csv`` for a shard."""
    name = stem if shard is None else f"{stem}.shard-{shard.index}-of-{shard.count}"
    return Path(root) / f"{name}{ext}"


def all_logs(root, stem, ext=".csv"):
    """Every shard's and the unsharded log of that kind in ``root``, whatever N made them."""
    root = Path(root)
    return sorted(p for p in [root / f"{stem}{ext}", *root.glob(f"{stem}.shard-*-of-*{ext}")]
                  if p.is_file())


def _sibling_log(path, shard):
    m = re.search(r"\.shard-(\d+)-of-(\d+)\.", path.name)
    return m is not None and int(m.group(2)) == shard.count and int(m.group(1)) != shard.index


def _clear_shared(out_dir, shard):
    """Shard 0's overwrite: the set's own files, not the series (each shard redoes its stale
    ones by their digest) nor the logs of sibling shards that may be running now."""
    for p in Path(out_dir).iterdir():
        if p.is_file() and not _sibling_log(p, shard):
            p.unlink()


def guard(out_dir, record, overwrite, what, shard, unknown_outputs):
    """The rerun rule (rsna_pe.records.provenance.guard) for one shard of an output set.

    ``unknown_outputs()`` says whether ``out_dir`` holds outputs that do not carry this record's
    digest; it is asked only when there is no record (outputs of sibling shards that started
    first carry it, so they are never unknown).
    """
    has_record = provenance.read_record(out_dir) is not None
    has_outputs = not has_record and unknown_outputs()
    if shard is None:
        provenance.guard(out_dir, record, has_outputs, overwrite, what)
    elif shard.index == 0:
        provenance.guard(out_dir, record, has_outputs, overwrite, what,
                         clear=lambda: _clear_shared(out_dir, shard))
    elif has_record and not overwrite:
        diff = provenance.difference(provenance.read_record(out_dir), record)
        if diff:
            raise provenance.stale_error(out_dir, what, f"was made with other settings ({diff})")
