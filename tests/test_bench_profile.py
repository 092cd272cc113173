"""The named data sets (configs/profiles.yml): their numbers, the generator reading them, and
run_demo.sh passing the chosen one to the generator (PROFILE=bench)."""
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pydicom
import pytest

import make_synthetic_data
from rsna_pe.core.cli import run
from rsna_pe.core.errors import ConfigError
from rsna_pe.synthetic.profiles import describe, load_profile, profile_names, with_overrides

REPO = Path(__file__).resolve().parents[1]
# The demo's data set as run_demo.sh wrote it out before the profiles existed.
DEMO_ARGS = ["--n-train", "240", "--n-test", "40", "--slices", "8", "12", "--matrix", "256",
             "--positive-fraction", "0.5", "--seed", "0"]


def test_the_profiles_numbers():
    demo, bench, thin = (load_profile(n) for n in ("demo", "bench", "bench_thin"))
    assert demo == dict(n_train=240, n_test=40, slices=[8, 12], matrix=256, positive_fraction=0.5,
                        seed=0, slice_spacing=None)
    assert bench == {**demo, "n_train": 480, "n_test": 80, "slices": [16, 24]}
    assert bench["n_test"] / bench["n_train"] == demo["n_test"] / demo["n_train"]
    assert thin == {**bench, "slice_spacing": 2.0}
    assert {"demo", "bench", "bench_thin"} <= set(profile_names())
    assert describe(thin) == ("480 train + 80 test studies, 16-24 thin slices 2 mm apart, 256 px "
                              "matrix, 0.5 positive, generator seed 0")


def test_the_demo_profile_is_the_demos_former_command_line():
    # Same arguments, so the same bytes (test_bench_profile_thin checks the generator's bytes).
    before = vars(make_synthetic_data.parse_args(["data", *DEMO_ARGS]))
    now = vars(make_synthetic_data.parse_args(["data", "--profile", "demo"]))
    assert now.pop("profile") == "demo" and before.pop("profile") is None
    assert now == before


def test_options_given_with_a_profile_override_it():
    a = make_synthetic_data.parse_args(["d", "--profile", "bench_thin", "--n-train", "4",
                                        "--slices", "3", "5", "--slice-spacing", "1.25"])
    assert (a.n_train, a.n_test, list(a.slices), a.slice_spacing, a.matrix) == (4, 80, [3, 5], 1.25, 256)
    label, values, args = with_overrides("bench", {"n_train": 4, "slices": [3, 5], "matrix": None})
    assert label == "bench, n_train 4, slices [3, 5]"
    assert values == {**load_profile("bench"), "n_train": 4, "slices": [3, 5]}
    assert args == ["--profile", "bench", "--n-train", "4", "--slices", "3", "5"]


@pytest.mark.parametrize("text,match", [
    ("demo: {n_train: 1}\n", "lacks"),
    ("demo: {n_train: 1, n_test: 1, slices: [1, 2], matrix: 32, positive_fraction: 0.5, seed: 0, sise: 1}\n",
     "unknown keys"),
    ("a: {base: b}\nb: {base: a}\n", "loop"),
    ("demo: [1, 2]\n", "mapping"),
    ("demo: {n_train: [\n", "not YAML"),
])
def test_bad_profile_files_stop_in_one_line(tmp_path, text, match):
    f = tmp_path / "profiles.yml"
    f.write_text(text)
    name = "a" if "base" in text else "demo"
    with pytest.raises(ConfigError, match=match) as e:
        load_profile(name, f)
    assert str(f) in str(e.value) and "\n" not in str(e.value)


def test_an_unknown_profile_exits_2_naming_the_file(capsys):
    with pytest.raises(SystemExit) as e:
        run(lambda: make_synthetic_data.main(["d", "--profile", "nope"]))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "profiles.yml" in err and "nope" in err and "\n" not in err


@pytest.mark.parametrize("name", ["bench", "bench_thin"])
def test_the_generator_makes_a_profile_scaled_down(tmp_path, name):
    # The profile's machinery end to end, with the study counts and the matrix made tiny.
    out = tmp_path / "data"
    make_synthetic_data.main([str(out), "--profile", name, "--n-train", "4", "--n-test", "2",
                              "--matrix", "32", "--workers", "1"])
    manifest = json.loads((out / "synthetic.json").read_text())
    prof = load_profile(name)
    assert (manifest["n_train"], manifest["n_test"], manifest["matrix"]) == (4, 2, 32)
    assert (manifest["slices"], manifest["seed"], manifest["positive_fraction"]) == (
        prof["slices"], prof["seed"], prof["positive_fraction"])
    assert manifest.get("slice_spacing") == prof["slice_spacing"]
    lo, hi = prof["slices"]
    series = [d for d in (out / "train").glob("*/*") if d.is_dir()]
    assert len(series) == 4 and all(lo <= len(list(d.glob("*.dcm"))) <= hi for d in series)
    thickness = {float(pydicom.dcmread(f, stop_before_pixels=True).SliceThickness)
                 for d in series for f in list(d.glob("*.dcm"))[:1]}
    assert (thickness == {prof["slice_spacing"]}) == (prof["slice_spacing"] is not None)


# ----------------------------------------------------------------------------- run_demo.sh
FAKE_PY = """#!/bin/sh
# Records each call (folder and arguments); the data step succeeds, the next one stops the demo.
printf '%s|%s\\n' "$PWD" "$*" >> "$CALLS"
case "$1" in */make_synthetic_data.py) exit 0 ;; esac
exit 3
"""


@pytest.fixture
def demo_copy(tmp_path):
    """run_demo.sh with what it reads before the stages, in a folder of its own (so that its
    default workspace lands there), and an interpreter that records its calls."""
    repo = tmp_path / "repo"
    for rel in ("run_demo.sh", "scripts/setup_venv.sh", "configs/profiles.yml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, repo / rel)
    fake = tmp_path / "python"
    fake.write_text(FAKE_PY)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    env = {k: v for k, v in os.environ.items() if k not in (
        "PROFILE", "N_TRAIN", "N_TEST", "SLICES_MIN", "SLICES_MAX", "MATRIX", "POSITIVE_FRACTION",
        "SLICE_SPACING", "CONFIGS", "PY")}
    env.update(RSNA_PE_SYSTEM_PYTHON="1", PYTHON=str(fake), CALLS=str(calls))

    def run(*args, **extra):
        r = subprocess.run(["bash", str(repo / "run_demo.sh"), *args], env={**env, **extra},
                           capture_output=True, text=True, timeout=60)
        lines = calls.read_text().splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return r, [(Path(cwd), argv.split()) for cwd, argv in (x.split("|", 1) for x in lines)]
    return repo, run


def _generator_args(call, repo):
    cwd, argv = call
    assert argv[0] == str(repo / "src" / "make_synthetic_data.py") and argv[1] == "data"
    return make_synthetic_data.parse_args(argv[1:])


def test_run_demo_passes_the_bench_profile_and_works_in_bench(demo_copy):
    repo, run = demo_copy
    r, calls = run(PROFILE="bench")
    assert r.returncode == 3, r.stderr  # the fake stops it at stage 1
    assert len(calls) == 2 and calls[0][0] == repo / "bench"
    a = _generator_args(calls[0], repo)
    assert (a.n_train, a.n_test, tuple(a.slices), a.matrix, a.positive_fraction, a.seed,
            a.slice_spacing) == (480, 80, (16, 24), 256, 0.5, 0, None)
    assert not (repo / "demo").exists()


def test_run_demo_defaults_to_the_demo_and_takes_overrides(demo_copy, tmp_path):
    repo, run = demo_copy
    _, calls = run()
    assert calls[0][0] == repo / "demo"
    assert vars(_generator_args(calls[0], repo)) == vars(make_synthetic_data.parse_args(
        ["data", "--profile", "demo", *DEMO_ARGS]))
    _, calls = run(str(tmp_path / "ws"), PROFILE="bench_thin", N_TRAIN="4", SLICES_MIN="3",
                   SLICES_MAX="5", SLICE_SPACING="1.5")
    a = _generator_args(calls[0], repo)
    assert calls[0][0] == tmp_path / "ws"
    assert (a.n_train, a.n_test, tuple(a.slices), a.slice_spacing) == (4, 80, (3, 5), 1.5)


@pytest.mark.parametrize("env,match", [({"PROFILE": "bnech"}, "PROFILE=bnech"),
                                       ({"PROFILE": "demo"}, "SLICES_MIN and SLICES_MAX")])
def test_run_demo_refuses_a_bad_profile_before_making_anything(demo_copy, env, match):
    repo, run = demo_copy
    extra = {"SLICES_MIN": "3"} if env["PROFILE"] == "demo" else {}
    r, calls = run(**env, **extra)
    assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert calls == [] and sorted(p.name for p in repo.iterdir()) == ["configs", "run_demo.sh", "scripts"]

