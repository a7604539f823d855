"""The model families; importing this package registers every zoo model."""

from zoo.models import alexnet, autoencoder, cifar_resnet, lenet, mlp, resnet  # noqa: F401
from zoo.models.resnet import BasicBlock, Bottleneck

__all__ = ["BasicBlock", "Bottleneck"]
