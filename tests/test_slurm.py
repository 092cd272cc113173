"""Slurm examples in scripts/slurm/: syntax, #SBATCH headers, the stage scripts and configs they
name, and a dry run with stand-ins for srun, scontrol and python (no cluster needed)."""
import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLURM = REPO / "scripts" / "slurm"
SCRIPTS = sorted(p for p in SLURM.iterdir() if p.is_file())


def test_there_are_examples_for_every_cluster_stage():
    named = " ".join(p.read_text() for p in SCRIPTS)
    for stage in ("make_image.py", "make_csv.py", "make_npz.py", "train_rsna.py",
                  "dump_embeddings.py"):
        assert f"src/{stage}" in named, stage


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_syntax_and_sbatch_header(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    sbatch = re.findall(r"^#SBATCH\s+(--[\w-]+)", text, re.M)
    assert "--job-name" in sbatch and "--time" in sbatch, sbatch
    # sbatch stops reading #SBATCH at the first command: all of them must come before any.
    lines = text.splitlines()
    first_command = next(i for i, ln in enumerate(lines) if ln.strip() and not ln.startswith("#"))
    assert not any(ln.startswith("#SBATCH") for ln in lines[first_command:])
    assert "set -euo pipefail" in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_names_existing_stages_and_configs(script):
    text = script.read_text()
    stages = re.findall(r"src/(\w+\.py)", text)
    assert stages
    for name in stages:
        assert (REPO / "src" / name).is_file(), name
    # $CONFIGS/<path> with the array's variant filled in, e.g. train_cnn/rexnet200_$variant.yml
    configs = re.findall(r"\$CONFIGS/([\w/$.]+\.yml)", text)
    assert configs
    for cfg in configs:
        for variant in ("bce", "focal"):
            path = REPO / "configs" / cfg.replace("$variant", variant)
            assert path.is_file(), path


@pytest.fixture
def fake_cluster(tmp_path):
    """srun, scontrol and a python that print their arguments; the environment of a job."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in {
        "srun": 'echo "srun $*"; exit "${FAKE_SRUN_RC:-0}"',
        "scontrol": 'printf "gpu-node-03\\ngpu-node-04\\n"',
        "python": 'echo "python $*"',
    }.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SLURM_") and k not in ("PY", "REPO", "CONFIGS", "VARIANTS", "FOLDS")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", PY=str(bin_dir / "python"), REPO=str(REPO),
               SLURM_JOB_ID="1234", SLURM_NNODES="2", SLURM_JOB_NODELIST="gpu-node-[03-04]",
               SLURM_CPUS_PER_TASK="16", SLURM_GPUS_ON_NODE="4")
    return env


def dry_run(name, env, *args, task=None):
    if task is not None:
        env = dict(env, SLURM_ARRAY_TASK_ID=str(task))
    return subprocess.run(["bash", str(SLURM / name), *args], cwd=REPO, env=env,
                          capture_output=True, text=True)


def test_preprocess_shards_stages_1_and_4_around_one_stage_2(fake_cluster):
    r = dry_run("preprocess.sbatch", fake_cluster)
    assert r.returncode == 0, r.stderr
    steps = [ln for ln in r.stdout.splitlines() if ln.startswith(("srun", "python"))]
    assert len(steps) == 3, r.stdout
    assert steps[0].startswith("srun") and "src/make_image.py" in steps[0]
    assert steps[1].startswith("python") and "src/make_csv.py" in steps[1]
    assert steps[2].startswith("srun") and "src/make_npz.py" in steps[2]
    for step in (steps[0], steps[2]):
        assert "--ntasks=2 --ntasks-per-node=1" in step and "shard=auto" in step
        assert "workers=16" in step
    assert "shard" not in steps[1]


@pytest.mark.parametrize("rc, goes_on", [(2, True), (1, False)])
def test_preprocess_goes_on_after_unreadable_series_only(fake_cluster, rc, goes_on):
    # Exit 2 of stage 1: some series listed in errors.csv, the rest converted; stage 2 drops them.
    r = dry_run("preprocess.sbatch", dict(fake_cluster, FAKE_SRUN_RC=str(rc)))
    assert ("src/make_csv.py" in r.stdout) == goes_on, r.stdout
    assert r.returncode == rc  # the last step's status, or stage 1's


@pytest.mark.parametrize("task, variant, fold", [(0, "bce", 0), (4, "focal", 1)])
def test_train_cnn_runs_one_torchrun_per_node(fake_cluster, task, variant, fold):
    r = dry_run("train_cnn.sbatch", fake_cluster, "train.batch_size=16", task=task)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("srun")]
    assert "--ntasks=2 --ntasks-per-node=1" in line
    assert "-m torch.distributed.run --nnodes=2 --nproc_per_node=4" in line
    assert "--rdzv_backend=c10d --rdzv_endpoint=gpu-node-03:29734 --rdzv_id=1234" in line
    assert line.endswith(f"src/train_rsna.py -c {REPO}/configs/train_cnn/rexnet200_{variant}.yml"
                         f" dataset.fold={fold} train.batch_size=16")


def test_dump_and_rnn_pick_the_pair_of_their_array_task(fake_cluster):
    r = dry_run("dump_embeddings.sbatch", fake_cluster, task=5)
    assert r.returncode == 0, r.stderr
    assert (f"-m torch.distributed.run --standalone --nproc_per_node=4 {REPO}/src/dump_embeddings.py"
            f" -c {REPO}/configs/dump_embeddings/rexnet200_focal.yml dataset.fold=2") in r.stdout
    r = dry_run("train_rnn.sbatch", fake_cluster, task=3)
    assert r.returncode == 0, r.stderr
    assert (f"python {REPO}/src/train_rsna.py -c {REPO}/configs/train_rnn/rexnet200_focal.yml"
            " dataset.fold=0") in r.stdout


@pytest.mark.parametrize("name", ["train_cnn.sbatch", "dump_embeddings.sbatch", "train_rnn.sbatch"])
def test_array_task_beyond_the_pairs_is_an_error(fake_cluster, name):
    r = dry_run(name, fake_cluster, task=6)
    assert r.returncode == 2 and "array task 6" in r.stderr and "srun" not in r.stdout
    r = dry_run(name, dict(fake_cluster, VARIANTS="bce"), task=2)
    assert r.returncode == 0, r.stderr
