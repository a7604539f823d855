"""Builds the optional oneDNN extension; every piece of metadata lives in pyproject.toml.

`zoo/ops/_onednn*.so` is a plain shared library (XLA FFI handlers, loaded with ctypes by
`zoo.ops.native`), compiled against the XLA FFI headers of jaxlib and oneDNN 3.2 from the
`onednn-devel-cpu-gomp` wheel, both build requirements. The extension is optional: where it
does not compile (no compiler, another platform) the package installs without it and the zoo's
convolutions run on XLA.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _onednn_dirs() -> tuple[list[str], list[str]]:
    """oneDNN's include and library folders, wherever pip put the wheels' data files."""
    includes, libs = set(), set()
    for name in ("onednn-devel-cpu-gomp", "onednn-cpu-gomp"):
        try:
            files = importlib.metadata.distribution(name).files or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for f in files:
            path = Path(f.locate())
            if path.parts[-3:] == ("oneapi", "dnnl", "dnnl.hpp"):
                includes.add(str(path.parents[2]))  # <prefix>/include, holding oneapi/dnnl/
            elif f.name.startswith("libdnnl.so"):
                libs.add(str(path.parent))
    includes.add(str(Path(sys.prefix) / "include"))
    libs.add(str(Path(sys.prefix) / "lib"))
    return sorted(includes), sorted(libs)


def _ffi_include_dir() -> str:
    """The XLA FFI headers jaxlib ships (what `jax.ffi.include_dir()` returns, without jax)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or spec.origin is None:
        raise OSError("jaxlib is not installed: it provides the XLA FFI headers")
    return str(Path(spec.origin).parent / "include")


class BuildFfiLibrary(build_ext):
    """Adds the headers that only exist once the build requirements are installed."""

    def build_extension(self, ext: Extension) -> None:
        includes, libs = _onednn_dirs()
        ext.include_dirs = [_ffi_include_dir(), *includes]
        ext.library_dirs = libs
        super().build_extension(ext)

    def get_export_symbols(self, ext: Extension) -> list[str]:
        return []  # not a Python module: no PyInit_ symbol


setup(
    ext_modules=[
        Extension(
            "zoo.ops._onednn",
            sources=[
                "csrc/onednn_conv.cc",
                "csrc/onednn_batch_norm.cc",
                "csrc/max_pool.cc",
                "csrc/add_relu.cc",
                "csrc/winograd_conv.cc",
                "csrc/bf16_conv3x3_weights.cc",
                "csrc/winograd_bf16_conv.cc",
            ],
            depends=["csrc/kernel_common.h", "csrc/onednn_common.h", "csrc/max_pool_rows.inc"],
            language="c++",
            libraries=["dnnl"],
            # -O3 whatever Python was built with: after its CFLAGS, so it wins over Debian's and
            # Ubuntu's -O2, under which the extension's own loops (the residual join, max pool)
            # are not vectorised and ResNet-20's bf16 train step took 1.5x as long.
            extra_compile_args=["-std=c++17", "-O3", "-fopenmp", "-fvisibility=hidden"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": BuildFfiLibrary},
)
