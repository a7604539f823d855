"""Walk a network layer by layer with the lecture's formulas, without Flax.

Each model family describes its architecture once more, as calls on a `ShapeTrace`; the trace
applies `zoo.formulas` to get every layer's output shape, parameter count and multiply-accumulates.
Layer names are the Flax module paths ("stage1_block0/conv1"), so the tests can hold each row
against the real initialised variables and the real intermediate outputs.
"""

from __future__ import annotations

import dataclasses
import math

from zoo import formulas
from zoo.errors import InvalidValueError


@dataclasses.dataclass(frozen=True)
class Layer:
    """One row of the analytic summary.

    Attributes:
      name: the Flax module path of the layer, '/'-separated.
      kind: what it computes ("conv", "dense", "batchnorm", "maxpool", ...).
      output_shape: the per-example output, (H, W, C) or (features,).
      params: trainable parameters (the `params` collection).
      macs: multiply-accumulates for one example.
    """

    name: str
    kind: str
    output_shape: tuple[int, ...]
    params: int = 0
    macs: int = 0


class ShapeTrace:
    """The running per-example shape of a network, and the layers seen so far.

    Every method appends one `Layer` and returns the trace, so a plain network reads as a chain.
    A residual shortcut is a `fork()`: a trace from the same shape that appends to the same list.
    """

    def __init__(self, input_shape: tuple[int, ...], layers: list[Layer] | None = None):
        self.shape = tuple(input_shape)
        self.layers = [] if layers is None else layers

    def fork(self) -> ShapeTrace:
        """A branch starting at the current shape whose layers join the same summary."""
        return ShapeTrace(self.shape, self.layers)

    def _add(
        self, name: str, kind: str, shape: tuple[int, ...], params: int = 0, macs: int = 0
    ) -> ShapeTrace:
        self.shape = shape
        self.layers.append(Layer(name, kind, shape, params, macs))
        return self

    def _spatial(self) -> tuple[int, int, int]:
        if len(self.shape) != 3:
            raise InvalidValueError(f"expected an (H, W, C) feature map, the shape is {self.shape}")
        return self.shape  # type: ignore[return-value]

    def conv(
        self,
        name: str,
        features: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        *,
        bias: bool = True,
        groups: int = 1,
    ) -> ShapeTrace:
        h, w, c = self._spatial()
        oh = formulas.conv_output_size(h, kernel, stride, padding)
        ow = formulas.conv_output_size(w, kernel, stride, padding)
        return self._add(
            name,
            "conv",
            (oh, ow, features),
            formulas.conv_params(c, features, kernel, bias=bias, groups=groups),
            formulas.conv_macs(oh, ow, c, features, kernel, groups=groups),
        )

    def conv_transpose(
        self,
        name: str,
        features: int,
        kernel: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        *,
        bias: bool = True,
    ) -> ShapeTrace:
        h, w, c = self._spatial()
        oh, ow = (
            formulas.conv_transpose_output_size(n, kernel, stride, padding, output_padding)
            for n in (h, w)
        )
        # Every input pixel scatters a K x K x C_out patch: the MACs of the matching convolution.
        return self._add(
            name,
            "conv_transpose",
            (oh, ow, features),
            formulas.conv_params(c, features, kernel, bias=bias),
            formulas.conv_macs(h, w, c, features, kernel),
        )

    def reshape(self, name: str, shape: tuple[int, ...]) -> ShapeTrace:
        if math.prod(shape) != math.prod(self.shape):
            raise InvalidValueError(f"{name}: cannot reshape {self.shape} to {shape}")
        return self._add(name, "reshape", tuple(shape))

    def pool(
        self,
        name: str,
        window: int,
        stride: int | None = None,
        padding: int = 0,
        kind: str = "maxpool",
    ) -> ShapeTrace:
        h, w, c = self._spatial()
        stride = window if stride is None else stride
        oh = formulas.pool_output_size(h, window, stride, padding)
        ow = formulas.pool_output_size(w, window, stride, padding)
        return self._add(name, kind, (oh, ow, c))

    def subsample(self, name: str, window: int = 2) -> ShapeTrace:
        """LeNet-5's S layers: a window sum times a trainable coefficient, plus a bias."""
        self.pool(name, window, kind="subsample")
        self.layers[-1] = dataclasses.replace(self.layers[-1], params=2 * self.shape[-1])
        return self

    def adaptive_pool(
        self, name: str, output_size: tuple[int, int], kind: str = "adaptive_avgpool"
    ) -> ShapeTrace:
        _, _, c = self._spatial()
        return self._add(name, kind, (*output_size, c))

    def global_pool(self, name: str) -> ShapeTrace:
        _, _, c = self._spatial()
        return self._add(name, "global_avgpool", (c,))

    def norm(self, name: str, kind: str = "batchnorm") -> ShapeTrace:
        params = formulas.batchnorm_params(self.shape[-1]) if kind == "batchnorm" else 0
        return self._add(name, kind, self.shape, params)

    def flatten(self, name: str) -> ShapeTrace:
        return self._add(name, "flatten", (math.prod(self.shape),))

    def dense(self, name: str, features: int, *, bias: bool = True) -> ShapeTrace:
        if len(self.shape) != 1:
            raise InvalidValueError(
                f"{name}: a dense layer needs a flat input, the shape is {self.shape}"
            )
        (n,) = self.shape
        return self._add(
            name,
            "dense",
            (features,),
            formulas.dense_params(n, features, bias=bias),
            formulas.dense_macs(n, features),
        )

    def layer(
        self, name: str, kind: str, shape: tuple[int, ...], params: int = 0, macs: int = 0
    ) -> ShapeTrace:
        """A layer whose counts the family computes itself from the formulas (e.g. LeNet's C3)."""
        return self._add(name, kind, tuple(shape), params, macs)
