"""Fixtures shared by the stage tests."""
import pytest

from workspace import build


@pytest.fixture(scope="session")
def workspace(tmp_path_factory):
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
