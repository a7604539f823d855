"""The lecture's formulas for convolutional networks, as plain integer functions.

These are the textbook expressions (CMU 10-315, "Neural Networks Applications for Images"):

  output size      floor((W - K + 2P) / S) + 1
  conv parameters  C_out * (C_in / groups) * K * K  (+ C_out bias)
  dense parameters in * out  (+ out bias)

A kernel is K (square) or (K_h, K_w). They know nothing of Flax: `zoo.analytic` applies them to
each layer of a network and the tests check the result against real initialised variables.
"""

from __future__ import annotations

from zoo.errors import InvalidValueError


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidValueError(f"{name} must be a positive integer, got {value!r}")


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Output length of a convolution or pooling window: floor((W - K + 2P) / S) + 1."""
    _check_positive(size=size, kernel=kernel, stride=stride)
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise InvalidValueError(f"padding must be a non-negative integer, got {padding!r}")
    if size + 2 * padding < kernel:
        raise InvalidValueError(
            f"a {kernel}-wide window does not fit an input of {size} with padding {padding}"
        )
    return (size - kernel + 2 * padding) // stride + 1


def conv_transpose_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0
) -> int:
    """Output length of a transposed convolution: (W - 1) * S - 2P + K + output_padding.

    The inverse of `conv_output_size` in shape: with K=3, S=2, P=1 and output_padding=1 it
    doubles the size, undoing a stride-2 "same" convolution.
    """
    _check_positive(size=size, kernel=kernel, stride=stride)
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def same_output_size(size: int, stride: int = 1) -> int:
    """Output length with 'SAME' padding (Flax's default): ceil(W / S), padded as needed."""
    _check_positive(size=size, stride=stride)
    return -(-size // stride)


def pool_output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, *, ceil_mode: bool = False
) -> int:
    """Output length of a pooling window: the convolution's floor((W - K + 2P) / S) + 1.

    With `ceil_mode` (PyTorch's) it is ceil((W - K + 2P) / S) + 1, so a last, partial window
    covers what the floor leaves out, less one where that window would start in the right
    padding rather than the input; a window may then reach past the input's end (an input of
    2 still gives one 3-wide window), but not start past it.
    """
    if not ceil_mode:
        return conv_output_size(size, kernel, stride, padding)
    _check_positive(size=size, kernel=kernel, stride=stride)
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise InvalidValueError(f"padding must be a non-negative integer, got {padding!r}")
    if size + 2 * padding + stride - 1 < kernel:
        raise InvalidValueError(
            f"a {kernel}-wide window does not fit an input of {size} with padding {padding}, "
            "even rounding up"
        )
    out = (size + 2 * padding - kernel + stride - 1) // stride + 1
    return out - 1 if (out - 1) * stride >= size + padding else out


def adaptive_pool_window(size: int, bins: int, index: int) -> tuple[int, int]:
    """[start, end) of bin `index` of PyTorch's adaptive pooling of `size` inputs into `bins`:
    floor(i * W / n) to ceil((i + 1) * W / n). Bins overlap where n does not divide W, and an
    input smaller than n is repeated."""
    _check_positive(size=size, bins=bins)
    if not 0 <= index < bins:
        raise InvalidValueError(f"bin {index} is not one of {bins}")
    return (index * size) // bins, -(-(index + 1) * size // bins)


def _area(kernel: int | tuple[int, ...]) -> int:
    sides = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    _check_positive(**{f"kernel[{i}]": side for i, side in enumerate(sides)})
    return sides[0] * sides[1]


def conv_params(
    in_channels: int,
    out_channels: int,
    kernel: int | tuple[int, int],
    *,
    bias: bool = True,
    groups: int = 1,
) -> int:
    """Trainable parameters of a KxK convolution: C_out * (C_in / groups) * K * K (+ C_out)."""
    _check_positive(in_channels=in_channels, out_channels=out_channels, groups=groups)
    if in_channels % groups or out_channels % groups:
        raise InvalidValueError(
            f"groups={groups} must divide both {in_channels} and {out_channels}"
        )
    return out_channels * (in_channels // groups) * _area(kernel) + (out_channels if bias else 0)


def dense_params(in_features: int, out_features: int, *, bias: bool = True) -> int:
    """Trainable parameters of a fully connected layer: in * out (+ out)."""
    _check_positive(in_features=in_features, out_features=out_features)
    return in_features * out_features + (out_features if bias else 0)


def batchnorm_params(channels: int, *, scale: bool = True, bias: bool = True) -> int:
    """Trainable parameters of batch normalisation: a scale and a shift per channel.

    The running mean and variance are state, not parameters (torchvision counts them the same way).
    """
    _check_positive(channels=channels)
    return (int(scale) + int(bias)) * channels


def conv_macs(
    out_height: int,
    out_width: int,
    in_channels: int,
    out_channels: int,
    kernel: int | tuple[int, int],
    *,
    groups: int = 1,
) -> int:
    """Multiply-accumulates of one convolution on one image: one K*K*C_in/g dot per output."""
    return out_height * out_width * out_channels * (in_channels // groups) * _area(kernel)


def dense_macs(in_features: int, out_features: int) -> int:
    """Multiply-accumulates of one fully connected layer on one example."""
    return in_features * out_features


# --- The mobile networks' layers (MobileNet V2/V3, EfficientNet) ---------------------------------


def depthwise_conv_params(
    channels: int, kernel: int | tuple[int, int], *, bias: bool = True
) -> int:
    """A depthwise KxK convolution (one filter per channel, groups = C): C * K * K (+ C)."""
    return conv_params(channels, channels, kernel, bias=bias, groups=channels)


def depthwise_conv_macs(
    out_height: int, out_width: int, channels: int, kernel: int | tuple[int, int]
) -> int:
    """Multiply-accumulates of a depthwise convolution on one image: H_out * W_out * C * K * K."""
    return conv_macs(out_height, out_width, channels, channels, kernel, groups=channels)


def squeeze_excitation_params(channels: int, squeeze_channels: int) -> int:
    """Squeeze-and-excitation (Hu et al. 2018, Fig. 2), as torchvision builds it: two 1x1
    convolutions with biases, C -> S and S -> C, on the globally pooled map."""
    return conv_params(channels, squeeze_channels, 1) + conv_params(squeeze_channels, channels, 1)


def squeeze_excitation_macs(channels: int, squeeze_channels: int) -> int:
    """Its two 1x1 convolutions on one 1x1 map: 2 * C * S. Like the zoo's pooling layers, the
    mean over the map and the channel-wise rescaling count none (fvcore counts the mean as one
    per input element, `adaptive_avg_pool2d`, and skips the rescaling, `aten::mul`)."""
    return conv_macs(1, 1, channels, squeeze_channels, 1) + conv_macs(
        1, 1, squeeze_channels, channels, 1
    )


# --- Transformer and ConvNeXt layers (Vaswani et al. 2017; Dosovitskiy et al. 2020; Liu et al.
# 2022). Sequences are (L tokens, D features) per example.


def layernorm_params(channels: int, *, scale: bool = True, bias: bool = True) -> int:
    """Trainable parameters of layer normalisation over C channels: a scale and a shift each."""
    _check_positive(channels=channels)
    return (int(scale) + int(bias)) * channels


def layer_scale_params(channels: int) -> int:
    """Trainable parameters of layer scale (Touvron et al. 2021, CaiT): one factor per channel."""
    _check_positive(channels=channels)
    return channels


def class_token_params(dim: int) -> int:
    """A learned class token: one D-vector, prepended to every sequence."""
    _check_positive(dim=dim)
    return dim


def position_embedding_params(tokens: int, dim: int) -> int:
    """Learned absolute position embeddings: one D-vector per token (patches plus class token)."""
    _check_positive(tokens=tokens, dim=dim)
    return tokens * dim


def attention_params(dim: int, *, bias: bool = True) -> int:
    """Multi-head self-attention over D features: the query, key, value and output projections,
    each D x D (+ D bias), whatever the number of heads: 4 D^2 (+ 4 D)."""
    _check_positive(dim=dim)
    return 4 * dim * dim + (4 * dim if bias else 0)


def attention_macs(tokens: int, dim: int) -> int:
    """Multiply-accumulates of self-attention on one sequence of L tokens of D features: the four
    projections, 4 L D^2, and the two attention matmuls, Q K^T and (softmax) V, L^2 D each
    (summed over the heads, D = heads x head size). The softmax and the 1/sqrt(d) scale are
    elementwise and not counted, as a batch norm's are not."""
    _check_positive(tokens=tokens, dim=dim)
    return 4 * tokens * dim * dim + 2 * tokens * tokens * dim
