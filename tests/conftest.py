"""Fixtures shared by the stage tests."""
import pytest
import torch

from prep_data import STAGES, run_inline, write_dataset
from workspace import build


@pytest.fixture(scope="session")
def one_thread():
    """One OpenMP thread for in-process stages (they honour OMP_NUM_THREADS): tiny models gain
    nothing from more, and spinning threads on a busy 2-core machine make each step many times
    slower."""
    before = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory, one_thread):
    """A workspace after stages 1-6 (see workspace.py), built once per test session."""
    root = tmp_path_factory.mktemp("ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        build(root)
    return root


@pytest.fixture(scope="module")
def ws(workspace):
    """The shared workspace as the current folder (its configs use relative paths)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        yield workspace


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """A workspace after stages 1, 2 and 4 in one uninterrupted, unsharded run each: the
    reference that crash, shard and npz tests compare with."""
    ws = tmp_path_factory.mktemp("reference")
    write_dataset(ws / "data")
    for script in STAGES:
        run_inline(script, ws)
    return ws
