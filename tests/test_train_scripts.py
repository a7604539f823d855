"""The top-level train/ folder: job scripts and configs to run on a host, not an installed package.

Only `zoo` is importable from an install, so a user's own `train.py` (the most common script name
in ML) can import zoo and run its command line without shadowing anything.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.training.config import load_config_file, resolve

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "train" / "configs").glob("*.toml"))
QUICK = ("--epochs", "1", "--max-train-examples", "256", "--batch-size", "64")


def run_python(args: list[str], cwd: Path, mnist5k_dir: Path, tmp_path: Path):
    env = {**os.environ, "ZOO_DATA_DIR": str(mnist5k_dir), "ZOO_REGISTRY": str(tmp_path / "reg")}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_distribution_installs_zoo_alone_at_top_level():
    top_level = importlib.metadata.distribution("jax-zoo").read_text("top_level.txt")
    assert top_level.split() == ["zoo"]


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_every_shipped_config_is_a_valid_training_config(config):
    settings = load_config_file(config)
    assert resolve(settings).model == settings["model"]


def test_the_job_script_trains_from_a_config(tmp_path, mnist5k_dir):
    done = run_python(
        [
            str(REPO / "train" / "train.py"),
            "--config",
            str(REPO / "train" / "configs" / "lenet5_mnist5k.toml"),
            *QUICK,
            "--name",
            "job",
            "--log",
            str(tmp_path / "job.jsonl"),
        ],
        tmp_path,
        mnist5k_dir,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "saved job step 4 to" in done.stdout


def test_a_users_own_train_py_does_not_shadow_the_library(tmp_path, mnist5k_dir):
    # The report: `python train.py` importing zoo.plot failed with
    # "No module named 'train.data'; 'train' is not a package".
    (tmp_path / "train.py").write_text(
        "import sys\nimport zoo.cli\nimport zoo.plot\n\nsys.exit(zoo.cli.main(sys.argv[1:]))\n"
    )
    done = run_python(
        [
            "train.py",
            "train",
            "lenet5",
            *QUICK,
            "--name",
            "mine",
            "--log",
            str(tmp_path / "mine.jsonl"),
        ],
        tmp_path,
        mnist5k_dir,
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "saved mine step 4 to" in done.stdout


@pytest.mark.parametrize("script", ["slurm.sbatch", "tpu_pod.sh"])
def test_the_cluster_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(REPO / "train" / script)], check=True)
