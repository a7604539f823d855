"""`bench/gpu.py --tiny` on the CPU: the GPU benchmark runs as the GPU image would run it.

That image has neither tensorflow_datasets nor mlxtend, so the script runs here in a subprocess
whose import system refuses both; it must still write the JSON its readers expect. Tests import
nothing from bench/: the subprocess runs the script as a file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu.py"

# Runs argv[1] as __main__ (with its folder on the path, as `python FILE` would) after making
# the packages the GPU image lacks impossible to import.
WITHOUT_DATA_PACKAGES = """
import runpy, sys
from pathlib import Path

class Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow_datasets", "mlxtend"):
            raise ModuleNotFoundError(f"No module named {name!r} (absent from the GPU image)")
        return None

sys.meta_path.insert(0, Absent())
sys.argv = sys.argv[1:]
sys.path.insert(0, str(Path(sys.argv[0]).parent))
runpy.run_path(sys.argv[0], run_name="__main__")
"""

ROW_KEYS = {
    "model",
    "precision",
    "step",
    "batch",
    "image",
    "zoo_img_s",
    "torch_img_s",
    "ratio",
    "mfu",
    "train_flops_per_image",
    "zoo_compile_s",
    "torch_compile_s",
    "torch_mode",
    "torch_compile",
}


def positive(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


@pytest.mark.slow
def test_tiny_gpu_benchmark_runs_without_tfds_or_mlxtend(tmp_path):
    out = tmp_path / "tiny.json"
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    # Two of the tiny rows: both precisions, both JAX steps, the fewest compilations (the third,
    # ResNet-18 for the torchvision twin, doubles the time). A generous budget: this checks the
    # output, not the speed of a shared CPU.
    rows = "lenet5:bf16,lenet5:tf32"
    argv = [str(SCRIPT), "--tiny", "--rows", rows, "--budget-s", "3600", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_DATA_PACKAGES, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    report = json.loads(out.read_text())
    assert {
        "device",
        "versions",
        "settings",
        "roofs",
        "rows",
        "details",
        "skipped",
        "failed",
    } <= set(report)
    assert report["device"]["name"] and report["device"]["jax_platform"] == "cpu"
    assert report["skipped"] == [] and report["failed"] == []
    assert positive(report["roofs"]["bf16_tflops"]) and positive(report["roofs"]["tf32_tflops"])
    rows = report["rows"]
    # Each row asked for, with both JAX steps: the zoo's trainer and a user's plain loop.
    assert {(r["model"], r["precision"], r["step"]) for r in rows} == {
        (model, precision, step)
        for model, precision in (("lenet5", "bf16"), ("lenet5", "tf32"))
        for step in ("trainer", "plain")
    }
    for row in rows:
        assert set(row) == ROW_KEYS, row
        for key in ("zoo_img_s", "torch_img_s", "ratio", "mfu", "zoo_compile_s"):
            assert positive(row[key]), (key, row)
        assert math.isclose(
            row["ratio"], row["zoo_img_s"] / row["torch_img_s"], rel_tol=0.01
        )  # each rounded to 4 digits
        assert row["torch_mode"] == "eager" and row["torch_compile_s"] is None
    # The Markdown table: a header, a rule and one line per row.
    table = [line for line in done.stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| model | precision |") and len(table) == 2 + len(rows)
