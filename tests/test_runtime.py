"""`zoo.runtime`: `import zoo` changes nothing process-wide; `zoo.configure_cpu()` does, once.

- After `import zoo`, `XLA_FLAGS` is what it was and glibc's malloc behaves as by default (a
  large block is its own `mmap`); after `configure_cpu()` the zoo's flag is in `XLA_FLAGS` and
  reaches the compiler, and large blocks come from one heap, also from other threads.
- `configure_cpu()` leaves a user's own flags alone, honours the opt-outs, warns and sets
  nothing once a backend exists, and sets nothing twice; the entry points call it.
- Its settings keep XLA's per-step temporaries mapped, change a train step only within float
  rounding, and keep NaNs in maxima.
- The compilation cache honours its folder, its opt-out and a user's own setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import zoo
import zoo.cli
import zoo.training
from zoo import runtime
from zoo.ops import backend

glibc_only = pytest.mark.skipif(
    sys.platform != "linux" or not os.confstr("CS_GNU_LIBC_VERSION"), reason="glibc only"
)


def run_fresh(program: str, *argv: str, **env: str) -> str:
    """The last line `program` prints in a fresh interpreter, with the zoo's switches and
    `XLA_FLAGS` unset (then `env` added)."""
    unset = ("XLA_FLAGS", runtime.XLA_OPT_OUT_ENV, runtime.MALLOC_OPT_OUT_ENV, "JAX_PLATFORMS")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(program), *argv],
        env={**environment, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()[-1]


# Counts glibc's mmapped blocks around a 64 MiB malloc (in this thread, or in a new one): glibc
# maps any block that large by default (its threshold stops at 32 MiB).
MALLOC_PROBE = """
import ctypes, json, os, threading

libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)


class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


libc.mallinfo2.restype = Mallinfo2


def mapped_blocks_for_a_large_malloc(in_new_thread):
    kept, before = [], libc.mallinfo2().hblks
    allocate = lambda: kept.append(libc.malloc(64 << 20))
    if in_new_thread:
        thread = threading.Thread(target=allocate)
        thread.start()
        thread.join()
    else:
        allocate()
    mapped = libc.mallinfo2().hblks - before
    libc.free(kept[0])
    return mapped


import sys
import zoo

before = os.environ.get("XLA_FLAGS")
settings = zoo.configure_cpu() if sys.argv[1] == "configure" else zoo.CpuSettings()
print(json.dumps({
    "XLA_FLAGS": [before, os.environ.get("XLA_FLAGS")],
    "mapped": mapped_blocks_for_a_large_malloc(False),
    "mapped_in_thread": mapped_blocks_for_a_large_malloc(True),
    "settings": [list(settings.xla_flags), [name for name, _ in settings.malloc]],
}))
"""


@glibc_only
def test_import_zoo_changes_nothing_process_wide():
    user_flags = "--xla_force_host_platform_device_count=1"
    imported = json.loads(run_fresh(MALLOC_PROBE, "import", XLA_FLAGS=user_flags))
    assert imported == {
        "XLA_FLAGS": [user_flags, user_flags],  # as it was before `import zoo`
        "mapped": 1,  # glibc's own behaviour: a large block is its own mmap
        "mapped_in_thread": 1,
        "settings": [[], []],
    }


@glibc_only
def test_configure_cpu_sets_xla_flags_and_malloc_options():
    user_flags = "--xla_force_host_platform_device_count=1"
    configured = json.loads(run_fresh(MALLOC_PROBE, "configure", XLA_FLAGS=user_flags))
    assert configured == {
        "XLA_FLAGS": [user_flags, " ".join([user_flags, *runtime.XLA_CPU_DEFAULTS])],
        "mapped": 0,  # from the heap, kept for the next step
        "mapped_in_thread": 0,  # one arena: another thread's block too
        "settings": [
            list(runtime.XLA_CPU_DEFAULTS),
            ["M_ARENA_MAX", "M_MMAP_THRESHOLD", "M_TRIM_THRESHOLD"],
        ],
    }


def test_malloc_options_are_bounded():
    options = {name: value for name, _, value in runtime.malloc_options(24 * 2**30)}
    assert options == {
        "M_ARENA_MAX": 1,
        "M_MMAP_THRESHOLD": runtime.MALLOC_KEEP_LIMIT,
        "M_TRIM_THRESHOLD": runtime.MALLOC_KEEP_LIMIT,
    }
    small = {name: value for name, _, value in runtime.malloc_options(4 * 2**30)}
    assert small["M_MMAP_THRESHOLD"] == small["M_TRIM_THRESHOLD"] == 2**30


@pytest.fixture
def before_any_backend(monkeypatch):
    """`configure_cpu` as in a process where JAX has not started, and has set nothing yet."""
    monkeypatch.setattr(runtime, "_backends_initialised", lambda: False)
    monkeypatch.setattr(runtime, "_apply_malloc", lambda options: tuple(o[::2] for o in options))
    monkeypatch.setattr(runtime, "_applied_malloc", ())
    monkeypatch.setattr(runtime, "_accelerator_plugin_installed", lambda: False)
    monkeypatch.delenv(runtime.XLA_OPT_OUT_ENV, raising=False)
    monkeypatch.delenv(runtime.MALLOC_OPT_OUT_ENV, raising=False)
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)


def test_configure_cpu_respects_user_flags_and_opt_outs(monkeypatch, before_any_backend):
    user = f"{runtime.YNN_FUSION_FLAG}=dot --xla_force_host_platform_device_count=2"
    monkeypatch.setenv("XLA_FLAGS", user)
    assert runtime.configure_cpu(malloc=False) == runtime.CpuSettings()
    assert os.environ["XLA_FLAGS"] == user  # the user's own value wins

    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert runtime.configure_cpu(malloc=False).xla_flags == runtime.XLA_CPU_DEFAULTS
    assert os.environ["XLA_FLAGS"].split() == [
        "--xla_force_host_platform_device_count=2",
        *runtime.XLA_CPU_DEFAULTS,
    ]
    assert runtime.configure_cpu(malloc=False) == runtime.CpuSettings()  # once only

    for env, value in (
        (runtime.XLA_OPT_OUT_ENV, "0"),
        (runtime.MALLOC_OPT_OUT_ENV, "off"),
        ("JAX_PLATFORMS", "cuda"),
    ):
        with monkeypatch.context() as m:
            m.setenv("XLA_FLAGS", "")
            m.setenv(env, value)
            settings = runtime.configure_cpu()
            if env != runtime.MALLOC_OPT_OUT_ENV:
                assert settings.xla_flags == () and os.environ["XLA_FLAGS"] == ""
            if env != runtime.XLA_OPT_OUT_ENV:
                assert settings.malloc == ()


@glibc_only
def test_configure_cpu_applies_malloc_options_once(before_any_backend):
    settings = runtime.configure_cpu(xla_flags=False)
    assert [name for name, _ in settings.malloc] == [
        "M_ARENA_MAX",
        "M_MMAP_THRESHOLD",
        "M_TRIM_THRESHOLD",
    ]
    runtime._applied_malloc = settings.malloc  # as the real `_apply_malloc` records them
    assert runtime.configure_cpu(xla_flags=False) == runtime.CpuSettings()


def test_configure_cpu_after_the_backend_started_warns_and_sets_nothing(monkeypatch):
    monkeypatch.setattr(runtime, "_backends_initialised", lambda: True)
    monkeypatch.setattr(runtime, "_applied_malloc", ())
    monkeypatch.delenv(runtime.XLA_OPT_OUT_ENV, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    with pytest.warns(RuntimeWarning, match="call it before any JAX computation"):
        assert runtime.configure_cpu(malloc=False) == runtime.CpuSettings()
    assert os.environ["XLA_FLAGS"] == ""


def test_the_entry_points_configure_the_cpu(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "configure_cpu", lambda: calls.append(1))
    assert zoo.cli.main(["list", "lenet5"]) == 0
    with pytest.raises(zoo.UnknownModelError):
        zoo.training.train("no-such-model")
    assert len(calls) == 2


# A jitted step with a 64 MiB temporary, run 20 times: how many runs faulted most of it in.
REFAULT_PROBE = """
import resource, sys
import jax, jax.numpy as jnp
import zoo
if sys.argv[1] == "configure":
    zoo.configure_cpu()
run = jax.jit(lambda x: (jnp.sin(x).T @ jnp.ones(4096)).sum())  # a 64 MiB temporary
x = jnp.ones((4096, 4096))
pages = 64 * 2**20 // resource.getpagesize()
refaulted = []
for _ in range(20):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    run(x).block_until_ready()
    refaulted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > pages // 2)
print(sum(refaulted[10:]))
"""


@glibc_only
def test_malloc_options_stop_each_execution_faulting_its_buffers_in_again():
    # glibc's defaults map every execution's 64 MiB temporary afresh, faulted in page by page;
    # with the zoo's options the heap grows a few times while its layout settles, then is reused.
    for setup, refaulting in (("configure", range(6)), ("import", [10])):
        environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        done = subprocess.run(
            [sys.executable, "-c", REFAULT_PROBE, setup],
            env=environment,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert int(done.stdout.split()[-1]) in refaulting, (setup, done.stdout)


YNN_PROBE = """
import sys
import jax, jax.numpy as jnp
import zoo
if sys.argv[1] == "configure":
    zoo.configure_cpu()
x, w = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
nhwc = ("NHWC", "HWIO", "NHWC")
conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=nhwc)
print(jax.jit(conv).lower(x, w).compile().as_text().count("ynn_fusion"))
"""


def test_configure_cpu_flags_reach_the_compiler():
    # XLA reads XLA_FLAGS once, when the backend starts: set by `configure_cpu()` after `import
    # jax`, XLA's convolution stays in its own kernels; with jaxlib's defaults YNNPACK gets it.
    environment = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def ynn_fusions(setup: str) -> int:
        done = subprocess.run(
            [sys.executable, "-c", YNN_PROBE, setup],
            env=environment,
            capture_output=True,
            text=True,
            check=True,
        )
        return int(done.stdout.split()[-1])

    assert ynn_fusions("configure") == 0
    assert ynn_fusions("import") >= 1


def test_xla_defaults_keep_nans_in_maxima():
    # The zoo's flags once handed YNNPACK elementwise ops and dots with fused epilogues, which
    # compute max(NaN, 0) = 0 from 4,096 elements on. Under the flags (this process: conftest
    # applies them) a NaN stays a NaN, as in XLA's own kernels.
    assert set(runtime.XLA_CPU_DEFAULTS) <= set(os.environ.get("XLA_FLAGS", "").split())
    x = jax.random.normal(jax.random.key(0), (64, 128)).at[3, 5].set(jnp.nan)
    w = jnp.full((128, 256), 0.01)
    maxima = {
        "relu": nn.relu,
        "maximum": lambda x: jnp.maximum(x, 0.0),
        "minimum": lambda x: jnp.minimum(x, 0.0),
        "relu of a dense layer": lambda x: nn.relu(x @ w + 0.1),
    }
    for name, f in maxima.items():
        assert jnp.isnan(jax.jit(f)(x)).any(), name


def test_xla_defaults_change_a_train_step_only_within_rounding():
    # The same lowered CIFAR ResNet step, on XLA's convolutions (where the flags differ from
    # jaxlib's), compiled with the zoo's library fusions and with jaxlib's default ones: loss and
    # new parameters agree to float32 rounding.
    from zoo.training.config import TrainConfig
    from zoo.training.state import create_train_state, make_optimizer
    from zoo.training.step import train_step

    model = zoo.create_model("resnet20", stage_sizes=(1, 1, 1))  # ResNet-8: compiles faster
    tx = make_optimizer(TrainConfig(model="resnet20", epochs=1), steps_per_epoch=10)
    # Random values in the state's shapes (initialising for real takes seconds on 2 cores).
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: create_train_state(model, tx, (16, 16, 3), jax.random.key(0)))
    state = jax.tree.map(
        lambda s: (
            jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)
            if jnp.issubdtype(s.dtype, jnp.floating)
            else jnp.zeros(s.shape, s.dtype)
        ),
        shapes,
    )
    batch = {
        "image": jnp.asarray(rng.standard_normal((8, 16, 16, 3)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 10, 8), jnp.int32),
    }
    with backend.portable():
        lowered = jax.jit(train_step).lower(state, batch)

    def fusion_kinds(flag: str) -> dict[str, str]:
        kinds = flag.split("=", 1)[1].upper().split(",")
        return {
            "xla_cpu_experimental_ynn_fusion_type": ",".join(
                f"LIBRARY_FUSION_TYPE_{kind}" for kind in kinds
            )
        }

    (zoos,) = runtime.XLA_CPU_DEFAULTS
    fast = lowered.compile(fusion_kinds(zoos))
    plain = lowered.compile(
        fusion_kinds(f"{runtime.YNN_FUSION_FLAG}=individual_dot,individual_convolution,reduce")
    )
    assert fast.as_text() != plain.as_text()
    fast_state, fast_metrics = fast(state, batch)
    plain_state, plain_metrics = plain(state, batch)
    assert np.isfinite(plain_metrics["loss_sum"])
    np.testing.assert_allclose(fast_metrics["loss_sum"], plain_metrics["loss_sum"], rtol=1e-5)
    for got, want in zip(
        jax.tree.leaves((fast_state.params, fast_state.batch_stats)),
        jax.tree.leaves((plain_state.params, plain_state.batch_stats)),
        strict=True,
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_compilation_cache_folder_and_opt_outs(monkeypatch, tmp_path):
    saved = (
        jax.config.jax_compilation_cache_dir,
        jax.config.jax_persistent_cache_min_compile_time_secs,
        jax.config.jax_compilation_cache_max_size,
    )
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        monkeypatch.setenv("ZOO_COMPILATION_CACHE", "0")
        assert runtime.enable_compilation_cache(tmp_path) is None
        assert jax.config.jax_compilation_cache_dir is None

        monkeypatch.delenv("ZOO_COMPILATION_CACHE")
        monkeypatch.setenv("ZOO_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
        assert runtime.default_cache_dir() == tmp_path / "env"
        assert runtime.enable_compilation_cache() == tmp_path / "env"
        assert (tmp_path / "env").is_dir()
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "env")
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0
        assert jax.config.jax_compilation_cache_max_size == runtime.CACHE_MAX_BYTES

        # A folder already configured in JAX (by the user) is kept.
        assert runtime.enable_compilation_cache(tmp_path / "other") == tmp_path / "env"

        monkeypatch.delenv("ZOO_COMPILATION_CACHE_DIR")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert runtime.default_cache_dir() == tmp_path / "xdg" / "jax-zoo" / "xla"
    finally:
        jax.config.update("jax_compilation_cache_dir", saved[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", saved[1])
        jax.config.update("jax_compilation_cache_max_size", saved[2])


def test_the_readme_loop_runs_and_configures_the_cpu():
    # The README's "Your own training loop", as written there, in a fresh process.
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text[text.index("### Your own training loop") :]
    start = section.index("```python\n") + len("```python\n")
    example = section[start : section.index("```\n", start)]
    check = "\nimport os\nprint(float(loss), os.environ['XLA_FLAGS'])\n"
    loss, flags = run_fresh(example + check).split(" ", 1)
    assert np.isfinite(float(loss))
    assert flags.split() == list(runtime.XLA_CPU_DEFAULTS)
