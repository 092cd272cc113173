"""Fixtures shared by the stage tests."""
import pytest
import torch

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
