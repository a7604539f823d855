"""The model families; importing this package registers every zoo model."""

from zoo.models import (  # noqa: F401
    alexnet,
    autoencoder,
    cifar_resnet,
    convnext,
    lenet,
    mlp,
    resnet,
    vit,
)
from zoo.models.base import ImageModel, Stage
from zoo.models.heads import replace_head
from zoo.models.resnet import BasicBlock, Bottleneck

__all__ = ["BasicBlock", "Bottleneck", "ImageModel", "Stage", "replace_head"]
