"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo import runtime
from zoo.data import DATA_DIR_ENV


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
