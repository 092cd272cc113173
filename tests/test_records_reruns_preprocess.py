"""Stages 1, 2, 4 across reruns: killed at any write, stale outputs, unchanged reruns, umask."""
import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from rsna_pe.core import paths
from rsna_pe.core.errors import PipelineError
from rsna_pe.core.io import CRASH_EXIT_CODE
from rsna_pe.data.images import SERIES_MANIFEST
from support.prep_data import (
    N_STUDIES,
    SIZE,
    copy_inputs,
    file_bytes,
    leftovers,
    listing,
    run_inline,
    run_stage,
)

JPEGS, FOLD = f"train-jpegs-{SIZE}", "fold"
# Stage 1 writes: record, config copy, one folder per series, errors log, manifest.
STAGE1_WRITES = 2 + N_STUDIES + 2
# Stage 4 writes: record, config copy, one npz per series, errors log.
STAGE4_WRITES = 2 + N_STUDIES + 1


def _killed_then_rerun(script, ws, crash_at):
    died = run_stage(script, ws, crash_at=crash_at)
    assert died.returncode == CRASH_EXIT_CODE, died.stderr
    assert leftovers(ws)  # the kill came between a temporary's write and its rename
    done = run_stage(script, ws)
    assert done.returncode == 0, done.stderr
    for run in (died, done):  # the hex ids of the data set read without pydicom's warning
        assert "Invalid value for VR UI" not in run.stderr
    assert not leftovers(ws)


@pytest.mark.parametrize("crash_at", [1, 2, 2 + N_STUDIES // 2, STAGE1_WRITES - 1, STAGE1_WRITES])
def test_stage1_killed_at_a_write_resumes_to_identical_outputs(reference, tmp_path, crash_at):
    ws = copy_inputs(reference, tmp_path)
    _killed_then_rerun("make_image.py", ws, crash_at)
    out, want = paths.jpeg_dir(ws / "data", SIZE), paths.jpeg_dir(reference / "data", SIZE)
    assert file_bytes(out) == file_bytes(want)  # every JPEG, series manifest, manifest.csv, record


@pytest.mark.parametrize("crash_at", [1, 2, 2 + N_STUDIES // 2, STAGE4_WRITES])
def test_stage4_killed_at_a_write_resumes_to_identical_outputs(reference, tmp_path, crash_at):
    ws = copy_inputs(reference, tmp_path, JPEGS, FOLD)
    _killed_then_rerun("make_npz.py", ws, crash_at)
    out, want = paths.npz_dir(ws / "data", SIZE), paths.npz_dir(reference / "data", SIZE)
    assert file_bytes(out) == file_bytes(want)


def _one_line_error(script, ws, *extra):
    with pytest.raises(PipelineError) as e:
        run_inline(script, ws, *extra)
    msg = str(e.value)
    assert "overwrite=true" in msg and "\n" not in msg
    return msg


def _without_record(entries, folder):
    """A listing less ``folder``'s record.json and ``folder`` itself (which it changes)."""
    drop = {str(folder), str(folder / "record.json")}
    return {p: v for p, v in entries.items() if p not in drop}


def _record(folder):
    return json.loads((folder / "record.json").read_text())


def test_stage1_rerun_rule(reference, tmp_path):
    ws = copy_inputs(reference, tmp_path, JPEGS)
    out = paths.jpeg_dir(ws / "data", SIZE)
    before = listing(ws)
    run_inline("make_image.py", ws)
    assert listing(ws) == before                      # unchanged rerun: nothing written
    old = {p: b for p, b in file_bytes(out).items() if p.endswith(".jpg")}
    assert "quality: 95 -> 90" in _one_line_error("make_image.py", ws, "quality=90")
    assert listing(ws) == before                      # a refused rerun changes nothing either
    run_inline("make_image.py", ws, "quality=90", "overwrite=true")
    new = {p: b for p, b in file_bytes(out).items() if p.endswith(".jpg")}
    assert new.keys() == old.keys() and all(new[p] != old[p] for p in old)
    assert _record(out)["params"]["quality"] == 90

    # A lost record.json: every series still names the record it was made under, so the set
    # is known; the record is written again and nothing else.
    record = (out / "record.json").read_bytes()
    (out / "record.json").unlink()
    before = listing(ws)
    run_inline("make_image.py", ws, "quality=90")
    assert (out / "record.json").read_bytes() == record
    rel = out.relative_to(ws)
    assert _without_record(listing(ws), rel) == _without_record(before, rel)
    # Outputs that name no record (made before records): unknown.
    (out / "record.json").unlink()
    for m in out.rglob(SERIES_MANIFEST):
        m.unlink()
    assert "without a record" in _one_line_error("make_image.py", ws, "quality=90")
    run_inline("make_image.py", ws, "quality=90", "overwrite=true")
    assert len(list(out.rglob(SERIES_MANIFEST))) == N_STUDIES


def test_stage2_and_stage4_rerun_rule(reference, tmp_path):
    ws = copy_inputs(reference, tmp_path, JPEGS, FOLD, "npz")
    fold, npz = paths.fold_csv(ws / "data", SIZE), paths.npz_dir(ws / "data", SIZE)
    before = listing(ws)
    for script in ("make_csv.py", "make_npz.py"):
        run_inline(script, ws)
    assert listing(ws) == before                      # unchanged reruns: nothing written

    run_inline("make_image.py", ws, "quality=90", "overwrite=true")   # the JPEG set changes
    assert "inputs.jpegs.digest" in _one_line_error("make_csv.py", ws)
    run_inline("make_csv.py", ws, "overwrite=true")
    assert _record(fold.parent)["inputs"]["jpegs"]["digest"] != \
        _record(paths.fold_csv(reference / "data", SIZE).parent)["inputs"]["jpegs"]["digest"]
    assert "inputs.fold_csv.digest" in _one_line_error("make_npz.py", ws)
    run_inline("make_npz.py", ws, "overwrite=true")
    jpegs = paths.jpeg_dir(ws / "data", SIZE)
    for f in npz.rglob("*.npz"):                      # repacked from the new JPEGs
        with np.load(f) as z:
            first = jpegs / f.parent.name / f.stem / f"0000_{z['sop'][0]}.jpg"
            assert z["jpeg"][:z["jpeg_offsets"][1]].tobytes() == first.read_bytes()

    (fold.parent / "record.json").unlink()            # the fold csv names no record itself
    assert "without a record" in _one_line_error("make_csv.py", ws)
    run_inline("make_csv.py", ws, "overwrite=true")   # the same record again: npz still current
    (npz / "record.json").unlink()
    before = listing(npz)
    run_inline("make_npz.py", ws)                     # every npz names its record: known
    assert _without_record(listing(npz), Path(".")) == _without_record(before, Path("."))
    victim = next(npz.rglob("*.npz"))                 # an npz of the old layout names none
    np.savez(victim, imgs=np.zeros((1, 3, 2, 2), np.uint8))
    (npz / "record.json").unlink()
    assert "without a record" in _one_line_error("make_npz.py", ws)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_honour_the_umask(reference, tmp_path, umask):
    ws = copy_inputs(reference, tmp_path)
    old = os.umask(umask)
    try:
        for script in ("make_image.py", "make_csv.py", "make_npz.py"):
            run_inline(script, ws)
    finally:
        os.umask(old)
    roots = [paths.jpeg_dir(ws / "data", SIZE), paths.fold_csv(ws / "data", SIZE).parent,
             paths.npz_dir(ws / "data", SIZE)]
    found = {".jpg": 0, ".json": 0, ".csv": 0, ".npz": 0, "dir": 0}
    for p in [q for r in roots for q in [r, *r.rglob("*")]]:
        mode = stat.S_IMODE(p.stat().st_mode)
        kind = "dir" if p.is_dir() else p.suffix
        assert mode == (0o777 if kind == "dir" else 0o666) & ~umask, (p, oct(mode))
        if kind in found:
            found[kind] += 1
    assert all(found.values()), found
