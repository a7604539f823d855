"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest

import zoo
from zoo import runtime
from zoo.data import DATA_DIR_ENV
from zoo.images import MAX_PIXELS
from zoo.ops import conv, native

# The settings `zoo train` runs with, applied before any test starts JAX: the suite then runs
# each step as the zoo's own entry points do (tests/test_runtime.py checks them in fresh
# processes).
zoo.configure_cpu()


@pytest.fixture(autouse=True)
def no_persistent_compilation_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """`zoo train` turns JAX's disk cache on for the whole process: not inside the test run."""
    monkeypatch.setenv(runtime.CACHE_OPT_OUT_ENV, "0")


@pytest.fixture(autouse=True)
def user_registry(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """$ZOO_REGISTRY in a fresh temporary folder: no test ever writes to the real user registry."""
    root = tmp_path_factory.mktemp("registry")
    monkeypatch.setenv("ZOO_REGISTRY", str(root))
    return root


@pytest.fixture
def without_bf16_kernels(monkeypatch: pytest.MonkeyPatch):
    """oneDNN as on a CPU without bf16 kernels (no AVX512-BF16 or AMX): the convolution and
    batch norm queries find none in bf16; convolution plans are made anew."""
    real = native.implementation
    bf16 = native.PRECISIONS[jnp.dtype(jnp.bfloat16)]

    def implementation(op: str, kind: int, config: tuple[int, ...]) -> tuple[bool, str]:
        precision = config[-2] if op == native.CONV else config[4]  # csrc's Config field order
        if precision == bf16:
            return False, "unsupported"
        return real(op, kind, config)

    monkeypatch.setattr(native, "implementation", implementation)
    conv.clear_plans()
    yield
    conv.clear_plans()


@pytest.fixture(scope="session")
def mnist5k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data folder for the whole run, shared by the pytest-xdist workers.

    The embedded mnist5k set is prepared there on first use (~2 s); its loader holds a file lock,
    so concurrent workers prepare it once.
    """
    return tmp_path_factory.getbasetemp().parent / "zoo-data"


@pytest.fixture
def mnist5k_env(mnist5k_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points $ZOO_DATA_DIR at the shared folder, for code that finds mnist5k by itself."""
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist5k_dir))
    return mnist5k_dir


@pytest.fixture(scope="session")
def bad_image_files(tmp_path_factory: pytest.TempPathFactory) -> dict[Path, str]:
    """Files the audit gave as images, each with what the one-line error about it must say."""
    folder = tmp_path_factory.mktemp("bad-images")
    PIL.Image.new("1", (10_000, 10_000)).save(folder / "bomb.png")  # 12 kB, 100 M pixels
    PIL.Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "folder.png").mkdir()
    np.save(folder / "objects.npy", np.array([None, "x"], dtype=object), allow_pickle=True)
    (folder / "text.npy").write_text("0 1 2\n")
    messages = {
        "bomb.png": f"a 10000x10000 image (100,000,000 pixels) is larger than the {MAX_PIXELS:,}",
        "truncated.png": "cannot decode the image",
        "folder.png": "a folder, not an image file",
        "missing.png": "no such file",
        "objects.npy": "expected raw uint8 images (0..255), got object",
        "text.npy": "not a readable .npy file",
    }
    return {folder / name: message for name, message in messages.items()}
