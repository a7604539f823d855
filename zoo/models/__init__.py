"""The model families; importing this package registers every zoo model."""

from zoo.models import (  # noqa: F401
    alexnet,
    autoencoder,
    cifar_resnet,
    convnext,
    densenet,
    efficientnet,
    googlenet,
    lenet,
    mlp,
    mobilenet_v2,
    mobilenet_v3,
    resnet,
    vgg,
    vit,
)
from zoo.models.base import ImageModel, Stage
from zoo.models.heads import replace_head
from zoo.models.resnet import BasicBlock, Bottleneck

__all__ = ["BasicBlock", "Bottleneck", "ImageModel", "Stage", "replace_head"]
