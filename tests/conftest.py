"""Fixtures shared by the stage tests: the trained workspace, the stage 1-4 reference, a copy
for tests that read the workspace from their own folder, and headless Chromium."""
import importlib.util
import shutil

import pytest
import torch

from rsna_pe.core.config import REPO_ROOT
from support.prep_data import STAGES, run_inline, write_dataset
from support.workspace import build


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
def module_dir(tmp_path_factory, request):
    """A folder for one test module's shared fixtures, removed when the module ends unless one
    of its tests failed: the workspaces hold real rexnet_200 checkpoints (about 0.4 GB per
    trained CNN run), and kept to the end of the session they add up to more disk than a CI
    machine may have (pytest.ini removes passed tests' own folders the same way)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(scope="session")
def trained_ws(workspace, tmp_path_factory):
    """A copy of the trained workspace (records hold relative paths, so it stays valid) for
    tests that chdir into it themselves (``monkeypatch.chdir``)."""
    root = tmp_path_factory.mktemp("trained_ws") / "ws"
    shutil.copytree(workspace, root)
    return root


def _screenshot_script():
    path = REPO_ROOT / "scripts" / "make_viewer_screenshot.py"
    spec = importlib.util.spec_from_file_location("make_viewer_screenshot", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def chromium():
    """A headless Chromium WebDriver, started as scripts/make_viewer_screenshot.py starts it."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium/chromedriver not installed: apt-get install chromium chromium-driver")
    driver = _screenshot_script().open_chromium()
    yield driver
    driver.quit()
