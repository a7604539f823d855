"""A registry model as one portable `jax.export` artifact: raw uint8 images in, logits out.

    from zoo.export import export_model
    exported = export_model(zoo.hub.load("lenet5-mnist5k"))
    open("lenet5.jax", "wb").write(exported.serialize())
    # anywhere, with jax only (no zoo, no Flax):
    exported = jax.export.deserialize(bytearray(open("lenet5.jax", "rb").read()))
    logits = exported.call(raw_uint8_images)          # (N, H, W, C) -> (N, classes)

The artifact is StableHLO with the weights embedded as constants and the recorded
`Preprocessing` inside, so it computes what `LoadedModel.logits` computes. The batch dimension
is symbolic (any N), and the module is lowered for CPU, CUDA and TPU at once: with no custom
calls, one file runs on each. Raw images come with their channel axis: a grey (N, H, W) batch,
which `LoadedModel.predict` also takes, is `images[..., None]` here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from zoo.errors import InvalidValueError, MissingDependencyError
from zoo.hub import LoadedModel
from zoo.ops import portable

PLATFORMS = ("cpu", "cuda", "tpu")


def export_model(
    loaded: LoadedModel, *, platforms: Sequence[str] = PLATFORMS
) -> jax.export.Exported:
    """The inference function of `loaded`, raw uint8 (batch, H, W, C) -> float32 logits."""
    if loaded.preprocessing is None:
        raise InvalidValueError(
            f"{loaded.name} step {loaded.step} was saved without meta['preprocessing']; "
            "an exported model takes raw images, so it needs one"
        )
    check_platforms(platforms)
    variables, module, preprocessing = loaded.variables, loaded.module, loaded.preprocessing

    def logits(raw_images: jax.Array) -> jax.Array:
        outputs = module.apply(variables, preprocessing(raw_images), train=False)
        return outputs.astype(jnp.float32)

    h, w, c = preprocessing.source_shape
    images = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"batch, {h}, {w}, {c}"), jnp.uint8)
    with portable():  # No custom call (the oneDNN convolutions): it runs on every platform.
        return jax.export.export(jax.jit(logits), platforms=tuple(platforms))(images)


def check_platforms(platforms: Sequence[str]) -> None:
    """Raises unless `platforms` names some of `PLATFORMS`, each once."""
    if (
        not platforms
        or not set(platforms) <= set(PLATFORMS)
        or len(set(platforms)) != len(platforms)
    ):
        given = ", ".join(map(repr, platforms)) or "none"
        raise InvalidValueError(
            f"platforms must be some of {', '.join(PLATFORMS)}, each once, got {given}"
        )


def custom_calls(exported: jax.export.Exported) -> list[str]:
    """The custom-call targets in an exported module (jax's own shape assertions excepted)."""
    text = exported.mlir_module()
    targets = []
    for line in text.splitlines():
        if "stablehlo.custom_call" in line:
            target = line.split("@", 1)[1].split("(", 1)[0] if "@" in line else line.strip()
            if target != "shape_assertion":
                targets.append(target)
    return targets


def serialize(exported: jax.export.Exported) -> bytes:
    """The artifact's bytes (jax serializes with `flatbuffers`, an optional dependency of jax)."""
    try:
        return bytes(exported.serialize())
    except ImportError as error:
        raise MissingDependencyError(
            f"writing a jax.export file needs flatbuffers: pip install flatbuffers ({error})"
        ) from None


def describe(exported: jax.export.Exported) -> dict[str, Any]:
    """What the artifact takes and gives, for the CLI and for humans."""
    (arg,), (out,) = exported.in_avals, exported.out_avals
    return {
        "input": f"{arg.dtype}[{', '.join(map(str, arg.shape))}]",
        "output": f"{out.dtype}[{', '.join(map(str, out.shape))}]",
        "platforms": list(exported.platforms),
    }
