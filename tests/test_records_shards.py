"""Sharded stages 1 and 4: shard choice, equal outputs to one run, per-shard logs, stage 2's check."""
import logging

import pandas as pd
import pytest

from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.records import shards
from rsna_pe.records.shards import Shard
from support.prep_data import SIZE, copy_inputs, file_bytes, run_inline

LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID")


@pytest.mark.parametrize("spec, env, want", [
    ("", {}, None),
    ("1/3", {}, Shard(1, 3)),
    ("0/1", {}, None),                                       # one shard is all
    ("auto", {}, None),
    ("auto", {"RANK": "2", "WORLD_SIZE": "3"}, Shard(2, 3)),  # torchrun
    ("auto", {"SLURM_PROCID": "1", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0"}, Shard(1, 4)),  # srun step
    ("auto", {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, None),
    # torchrun inside an srun step: torchrun's global rank decides
    ("auto", {"RANK": "5", "WORLD_SIZE": "8", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
              "SLURM_STEP_ID": "3"}, Shard(5, 8)),
])
def test_shard_choice(spec, env, want):
    assert shards.parse(spec, env) == want


@pytest.mark.parametrize("spec, env, match", [
    ("2/2", {}, "0 <= K < N"),
    ("1-2", {}, "expected K/N"),
    # an sbatch batch script outside srun: N tasks but one process, which must not take 1/N
    ("auto", {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "srun"),
])
def test_shard_choice_errors(spec, env, match):
    with pytest.raises(PipelineError, match=match):
        shards.parse(spec, env)


def test_take_is_every_nth_of_the_sorted_list():
    keys = [("b", "1"), ("a", "2"), ("a", "1"), ("c", "0"), ("b", "0")]
    assert shards.take(keys, Shard(1, 2)) == [("a", "2"), ("b", "1")]
    assert shards.take(keys, None) == sorted(keys)


def _keys(ws):
    df = pd.read_csv(ws / "data" / "train.csv", dtype=str)
    return sorted(map(tuple, df[["StudyInstanceUID", "SeriesInstanceUID"]].drop_duplicates().values))


def _jpegs(ws):
    return paths.jpeg_dir(ws / "data", SIZE)


def test_two_shards_equal_one_run(reference, tmp_path):
    ws = copy_inputs(reference, tmp_path)
    run_inline("make_image.py", ws, "shard=0/2")
    with pytest.raises(PipelineError, match=r"2 series of train.csv have neither finished JPEGs") as e:
        run_inline("make_csv.py", ws)                   # shard 1 has not run yet
    assert f"first: {'/'.join(_keys(ws)[1])}, {'/'.join(_keys(ws)[3])})" in str(e.value)
    run_inline("make_image.py", ws, "shard=1/2")
    run_inline("make_csv.py", ws)
    for k in (0, 1):
        run_inline("make_npz.py", ws, f"shard={k}/2")

    got, want = file_bytes(_jpegs(ws)), file_bytes(_jpegs(reference))
    assert {p: b for p, b in got.items() if "/" in p} == {p: b for p, b in want.items() if "/" in p}
    assert got["record.json"] == want["record.json"]
    assert {"errors.shard-0-of-2.csv", "errors.shard-1-of-2.csv", "manifest.shard-0-of-2.csv",
            "manifest.shard-1-of-2.csv"} <= set(got)
    parts = pd.concat([pd.read_csv(_jpegs(ws) / f"manifest.shard-{k}-of-2.csv", dtype=str) for k in (0, 1)])
    whole = pd.read_csv(_jpegs(reference) / "manifest.csv", dtype=str)
    assert parts.sort_values(list(parts.columns)).reset_index(drop=True).equals(
        whole.sort_values(list(whole.columns)).reset_index(drop=True))
    fold = paths.fold_csv(ws / "data", SIZE)
    assert fold.read_bytes() == paths.fold_csv(reference / "data", SIZE).read_bytes()
    npz = file_bytes(paths.npz_dir(ws / "data", SIZE))
    want_npz = file_bytes(paths.npz_dir(reference / "data", SIZE))
    assert {p: b for p, b in npz.items() if p.endswith(".npz")} == \
        {p: b for p, b in want_npz.items() if p.endswith(".npz")}


@pytest.fixture
def launcher_env(monkeypatch):
    for k in LAUNCHER_ENV:
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def _converted(ws):
    return sorted((p.parent.name, p.name) for p in _jpegs(ws).glob("*/*") if p.is_dir())


def test_auto_takes_the_launchers_shard(reference, tmp_path, launcher_env):
    keys = _keys(reference)
    ws = copy_inputs(reference, tmp_path)
    launcher_env.setenv("RANK", "1")
    launcher_env.setenv("WORLD_SIZE", "2")
    run_inline("make_image.py", ws, "shard=auto")
    assert _converted(ws) == keys[1::2]
    assert (_jpegs(ws) / "errors.shard-1-of-2.csv").is_file()
    assert not (_jpegs(ws) / "record.json").exists()    # only shard 0 writes the record

    for k in LAUNCHER_ENV[:2]:
        launcher_env.delenv(k)
    launcher_env.setenv("SLURM_PROCID", "0")
    launcher_env.setenv("SLURM_NTASKS", "2")
    before = file_bytes(ws)
    with pytest.raises(PipelineError, match="SLURM_STEP_ID"):   # batch script, no srun step
        run_inline("make_image.py", ws, "shard=auto")
    assert file_bytes(ws) == before
    launcher_env.setenv("SLURM_STEP_ID", "0")
    run_inline("make_image.py", ws, "shard=auto")
    assert _converted(ws) == keys
    assert (_jpegs(ws) / "record.json").is_file()


def test_stage2_drops_only_series_without_finished_jpegs(reference, tmp_path, caplog):
    ws = copy_inputs(reference, tmp_path)
    train = pd.read_csv(ws / "data" / "train.csv", dtype=str)
    study, series = train.iloc[0][["StudyInstanceUID", "SeriesInstanceUID"]]
    dcm = sorted((ws / "data" / "train" / study / series).glob("*.dcm"))[0]
    good = dcm.read_bytes()
    dcm.write_bytes(b"not a dicom file")
    for k in (0, 1):
        try:
            run_inline("make_image.py", ws, f"shard={k}/2")
        except PipelineError as e:
            assert "1 of 2 series failed" in str(e)
    logs = {k: pd.read_csv(_jpegs(ws) / f"errors.shard-{k}-of-2.csv", dtype=str) for k in (0, 1)}
    assert sum(len(v) for v in logs.values()) == 1      # each shard kept its own log
    with caplog.at_level(logging.WARNING):
        run_inline("make_csv.py", ws)
    assert "dropping 1 series" in caplog.text
    fold = paths.fold_csv(ws / "data", SIZE)
    assert series not in set(pd.read_csv(fold, dtype=str).SeriesInstanceUID)

    # Fixed and converted under another N: the old 2-shard log still names it, and a stale
    # unsharded log too; a finished series is kept all the same.
    dcm.write_bytes(good)
    for k in range(3):
        run_inline("make_image.py", ws, f"shard={k}/3")
    pd.concat(logs.values()).to_csv(_jpegs(ws) / "errors.csv", index=False)
    assert "params.dropped" in str(pytest.raises(PipelineError, run_inline, "make_csv.py", ws).value)
    run_inline("make_csv.py", ws, "overwrite=true")
    assert fold.read_bytes() == paths.fold_csv(reference / "data", SIZE).read_bytes()
