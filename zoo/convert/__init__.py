"""Weights from other frameworks, converted into zoo variables.

    from zoo.convert import convert_state_dict, load_state_dict
    converted = convert_state_dict("resnet50", load_state_dict("resnet50.pth"))

`zoo import-torchvision` does the same from the command line and saves the result in the hub.
"""

from zoo.convert.torchvision import (
    ARCHS as TORCHVISION_ARCHS,
)
from zoo.convert.torchvision import (
    IMAGENET_PREPROCESSING,
    ConvertedModel,
    convert_state_dict,
    imagenet_categories,
    load_state_dict,
)

__all__ = [
    "IMAGENET_PREPROCESSING",
    "TORCHVISION_ARCHS",
    "ConvertedModel",
    "convert_state_dict",
    "imagenet_categories",
    "load_state_dict",
]
