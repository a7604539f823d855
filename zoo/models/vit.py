"""The Vision Transformer: an image as a sequence of patches, read by a transformer encoder.

A. Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021 (arXiv:2010.11929), Eq. 1-4: the image cut into P x P patches, each linearly
embedded (a P x P convolution of stride P); a learned class token prepended and learned position
embeddings added; L pre-norm encoder blocks (LayerNorm, multi-head self-attention, residual;
LayerNorm, an MLP D -> 4D -> D with GELU, residual); a final LayerNorm, and the class token's
state classified. The variants are Table 1's, in torchvision's layout (`VisionTransformer`) so
that its weights import exactly (`zoo.convert.torchvision`): LayerNorm eps 1e-6, one linear
head (no pre-logits layer), torchvision's initialisation (a zero head).

Other input sizes: `input_size` is the size the position embeddings are laid out for (the
design size; `zoo train` sets it to the data's). An image of another size gets them resampled
bicubically, as timm's ViTs do with `dynamic_img_size=True`
(`zoo.models.layers.resample_position_embedding`); a side that is not a multiple of the patch
loses its remainder, as the patch convolution's windows do. torchvision refuses other sizes.

Beyond torchvision: `drop_path_rate`, stochastic depth on both residual branches of every block,
rising linearly from 0 over the blocks (timm's ViT; torchvision's has none), 0 by default.
`dropout_rate` is torchvision's `dropout` (after the position embeddings, after the attention,
and in the MLP after the GELU and after the second layer), 0 by default; its
`attention_dropout` (of the attention weights) is not offered.

| name     | patch | layers | D    | MLP  | heads | params (1000 classes) |
|----------|-------|--------|------|------|-------|-----------------------|
| vit_b_16 | 16    | 12     | 768  | 3072 | 12    | 86,567,656            |
| vit_b_32 | 32    | 12     | 768  | 3072 | 12    | 88,224,232            |
| vit_l_16 | 16    | 24     | 1024 | 4096 | 16    | 304,326,632           |
"""

from __future__ import annotations

from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from zoo.errors import InvalidValueError
from zoo.models.base import ImageModel, Stage
from zoo.models.layers import (
    ClassToken,
    ClassTokenPool,
    MultiHeadSelfAttention,
    PositionEmbedding,
    TokenMap,
    check_positive,
    check_rate,
    drop_path_by,
    drop_path_noise,
    drop_path_rates,
    gelu,
    layer_norm,
    resample_position_embedding,
)
from zoo.ops import Conv, Dense, initializers
from zoo.registry import register

PAPER = "Dosovitskiy et al. 2020, An Image is Worth 16x16 Words"
# torchvision's MLPBlock: Xavier-uniform weights, biases normal with std 1e-6.
mlp_kernel_init = initializers.variance_scaling(1.0, "fan_avg", "uniform")
mlp_bias_init = initializers.normal(1e-6)


class EncoderBlock(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)) (Eq. 2-3)."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def branch(self, y: jax.Array, train: bool, noise: jax.Array | None) -> jax.Array:
        """A residual branch's output: dropout, then stochastic depth where `noise` is given."""
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        return y if noise is None else drop_path_by(y, self.drop_path_rate, noise)

    @nn.compact
    def __call__(
        self, x: jax.Array, train: bool = False, drop_noise: jax.Array | None = None
    ) -> jax.Array:
        """`drop_noise`: in training with stochastic depth, (2, batch) uniform draws, one per
        example for each residual branch (`drop_path_by`); None otherwise."""
        noise = (None, None) if drop_noise is None else (drop_noise[0], drop_noise[1])
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        dense = {"kernel_init": mlp_kernel_init, "bias_init": mlp_bias_init, **dtypes}
        y = layer_norm(self.dtype, self.param_dtype, "norm1")(x)
        y = MultiHeadSelfAttention(self.num_heads, name="attention", **dtypes)(y)
        x = x + self.branch(y, train, noise[0])
        y = layer_norm(self.dtype, self.param_dtype, "norm2")(x)
        y = gelu(Dense(self.mlp_dim, name="mlp_fc1", **dense)(y))
        y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
        y = Dense(x.shape[-1], name="mlp_fc2", **dense)(y)
        return x + self.branch(y, train, noise[1])


class VisionTransformer(ImageModel):
    """Dosovitskiy et al. 2020, Eq. 1-4 and Table 1 (see the module docstring).

    Attributes:
      patch_size: P, the side of the square patches (and the stride of their embedding).
      num_layers: encoder blocks.
      num_heads: attention heads per block; they split `hidden_dim`.
      hidden_dim: D, the width of every token.
      mlp_dim: the MLP's hidden width (4 D in Table 1).
      dropout_rate: torchvision's dropout (see the module docstring); needs a 'dropout' rng.
      drop_path_rate: stochastic depth of the last block, rising linearly from 0 (timm's rule);
        needs a 'dropout' rng.
    """

    num_classes: int = 1000
    in_channels: int = 3
    input_size: tuple[int, int] = (224, 224)
    patch_size: int = 16
    num_layers: int = 12
    num_heads: int = 12
    hidden_dim: int = 768
    mlp_dim: int = 3072
    dropout_rate: float = 0.0
    drop_path_rate: float = 0.0

    head_name: ClassVar[str] = "head"
    # torchvision's: fine-tuning starts from zero logits
    head_kernel_init: ClassVar[Any] = nn.initializers.zeros

    def __post_init__(self) -> None:
        model = "VisionTransformer"
        check_positive(
            model,
            patch_size=self.patch_size,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            hidden_dim=self.hidden_dim,
            mlp_dim=self.mlp_dim,
        )
        check_rate(model, "dropout_rate", self.dropout_rate)
        check_rate(model, "drop_path_rate", self.drop_path_rate)
        if self.hidden_dim % self.num_heads:
            raise InvalidValueError(
                f"{model}: hidden_dim {self.hidden_dim} must split evenly into "
                f"num_heads={self.num_heads} heads"
            )
        super().__post_init__()
        if min(self.input_size) < self.patch_size:
            raise InvalidValueError(
                f"{model}: input_size {tuple(self.input_size)} must hold at least one "
                f"{self.patch_size}x{self.patch_size} patch"
            )

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid of `input_size`: the layout of the position embeddings."""
        height, width = self.input_size
        return height // self.patch_size, width // self.patch_size

    @nn.nowrap
    def feature_stages(self) -> tuple[Stage, ...]:
        # Every block's patch tokens as an (H / P, W / P, D) map (timm's `forward_intermediates`).
        return tuple(Stage(f"block{i}", f"block{i}_map") for i in range(self.num_layers))

    @nn.nowrap
    def adapt_variables(self, variables: Any, source: nn.Module) -> Any:
        """`source`'s variables with its position embeddings resampled to this model's grid,
        as timm resamples a checkpoint's for a model of another image size."""
        if not isinstance(source, VisionTransformer) or source.grid == self.grid:
            return variables
        params = dict(variables["params"])
        embedding = params["pos_embedding"]["embedding"]
        resampled = resample_position_embedding(embedding, source.grid, self.grid)
        params["pos_embedding"] = {**params["pos_embedding"], "embedding": resampled}
        return {**variables, "params": params}

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        self.check_input(x)
        dtypes = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        p = self.patch_size
        x = Conv(self.hidden_dim, (p, p), p, "VALID", name="patch_embed", **dtypes)(x)
        batch, height, width, dim = x.shape
        x = ClassToken(param_dtype=self.param_dtype, name="class_token")(
            x.reshape(batch, height * width, dim)
        )
        x = PositionEmbedding(self.grid, param_dtype=self.param_dtype, name="pos_embedding")(
            x, grid=(height, width)
        )
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        noise = None  # One draw for both branches of every block, (blocks, 2, batch).
        if train and self.drop_path_rate > 0:
            draws = drop_path_noise(self.make_rng("dropout"), 2 * self.num_layers, batch)
            noise = draws.reshape(self.num_layers, 2, batch)
        for i, rate in enumerate(drop_path_rates(self.num_layers, self.drop_path_rate)):
            x = EncoderBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                rate,
                name=f"block{i}",
                **dtypes,
            )(x, train, None if noise is None or rate == 0 else noise[i])
            TokenMap((height, width), name=f"block{i}_map")(x)  # a feature stage; unused here
        x = layer_norm(self.dtype, self.param_dtype, "norm")(x)
        return self.classify(ClassTokenPool(name="pool")(x))


# name: (patch, layers, heads, D, MLP, torchvision's parameter count)
VARIANTS = {
    "vit_b_16": (16, 12, 12, 768, 3072, 86_567_656),
    "vit_b_32": (32, 12, 12, 768, 3072, 88_224_232),
    "vit_l_16": (16, 24, 16, 1024, 4096, 304_326_632),
}

for _name, (_patch, _layers, _heads, _dim, _mlp, _params) in VARIANTS.items():
    register(
        _name,
        VisionTransformer,
        patch_size=_patch,
        num_layers=_layers,
        num_heads=_heads,
        hidden_dim=_dim,
        mlp_dim=_mlp,
        num_classes=1000,
        in_channels=3,
        reference_params=_params,
        paper=f"{PAPER}, Table 1 (torchvision layout)",
        description=f"ViT-{_name[4].upper()}/{_patch}: {_layers} layers, D={_dim}, {_heads} heads",
    )
