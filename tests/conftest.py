"""Shared fixtures: a tiny trained workspace (stages 1-6, one CNN + LSTM pair) and headless
Chromium."""
import importlib.util
import shutil

import pytest

from rsna_pe.config import CONFIG_DIR, REPO_ROOT

DEMO = CONFIG_DIR / "demo"
WS_SIZE = 32
ONE_PAIR = ["models=[{cnn: rexnet200_bce, rnn: rexnet200_bce}]", "folds=[0]"]


@pytest.fixture(scope="session")
def trained_ws(tmp_path_factory):
    """A workspace after stages 1-6 for one CNN+RNN pair (bce, fold 0) at 32 px; tests chdir
    into it (``monkeypatch.chdir``) since configs name paths relative to the CWD."""
    import dump_embeddings
    import make_csv
    import make_image
    import make_npz
    import train_rsna
    from rsna_pe.synthetic import generate

    root = tmp_path_factory.mktemp("trained_ws")
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        generate(root / "data", n_train=24, n_test=3, slices=(4, 6), matrix=64, workers=1, seed=3)
        make_image.main(["-c", str(DEMO / "make_image.yml"), f"jpeg_size={WS_SIZE}", "workers=1"])
        make_csv.main(["-c", str(DEMO / "make_csv.yml"), f"jpeg_size={WS_SIZE}"])
        train_rsna.main(["-c", str(DEMO / "train_cnn" / "rexnet200_bce.yml"), f"jpeg_size={WS_SIZE}",
                         f"dataset.size={WS_SIZE}", "train.max_steps_per_epoch=2", "train.batch_size=8",
                         "train.val_batch_size=64", "train.num_workers=0", "wandb.mode=disabled"])
        make_npz.main(["-c", str(DEMO / "make_npz.yml"), f"jpeg_size={WS_SIZE}", "workers=1"])
        dump_embeddings.main(["-c", str(DEMO / "dump_embeddings" / "rexnet200_bce.yml"),
                              f"jpeg_size={WS_SIZE}", "num_workers=0", "batch_size=4"])
        train_rsna.main(["-c", str(DEMO / "train_rnn" / "rexnet200_bce.yml"), f"jpeg_size={WS_SIZE}",
                         "train.epochs=2", "train.num_workers=0", "wandb.mode=disabled"])
    finally:
        mp.undo()
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
