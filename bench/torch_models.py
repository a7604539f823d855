"""PyTorch twins of the zoo models that `bench/compare.py` times against ours.

Same architecture and the same trainable parameter count as the zoo model of the same name
(`compare.py` asserts the counts): LeNet-5 as the lecture lists it, the CIFAR ResNet-20 of He et
al. 2015 with option-A (zero-pad) shortcuts, and torchvision's own for the ImageNet networks
(ResNets, VGG, GoogLeNet without auxiliary heads, ResNeXt, Wide ResNet, DenseNet, MobileNets,
EfficientNets, ConvNeXt, ViT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LeNet5(nn.Module):
    """conv 6 k5 tanh, avg-pool 2; conv 16 k5 tanh, avg-pool 2; FC 120, 84 (tanh), 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 5)
        self.c3 = nn.Conv2d(6, 16, 5)
        self.c5 = nn.Linear(16 * 5 * 5, 120)
        self.f6 = nn.Linear(120, 84)
        self.output = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.tanh(self.c1(x)), 2)
        x = F.avg_pool2d(torch.tanh(self.c3(x)), 2)
        x = torch.flatten(x, 1)
        x = torch.tanh(self.c5(x))
        x = torch.tanh(self.f6(x))
        return self.output(x)


class ZeroPadShortcut(nn.Module):
    """Option A: subsample by `stride`, zero-pad the new channels (half before, half after)."""

    def __init__(self, features: int, stride: int):
        super().__init__()
        self.features, self.stride = features, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.features - x.shape[1]
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class CifarBasicBlock(nn.Module):
    def __init__(self, in_features: int, features: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_features, features, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(features)
        self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(features)
        needs = stride != 1 or in_features != features
        self.shortcut = ZeroPadShortcut(features, stride) if needs else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images, option-A shortcuts (He et al. 2015, Sec. 4.2)."""

    def __init__(self, n: int = 3, num_classes: int = 10, widths: tuple[int, ...] = (16, 32, 64)):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        blocks, in_features = [], widths[0]
        for i, width in enumerate(widths):
            for j in range(n):
                blocks.append(CifarBasicBlock(in_features, width, 2 if i > 0 and j == 0 else 1))
                in_features = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        x = self.blocks(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def create(name: str, num_classes: int) -> nn.Module:
    """The PyTorch model equivalent to `zoo.create_model(name, num_classes=num_classes)`."""
    if name == "lenet5":
        return LeNet5(num_classes)
    if name == "resnet20":
        return CifarResNet(3, num_classes)
    import torchvision

    if name.startswith("resnet") and name[6:] in ("18", "34", "50", "101", "152"):
        return getattr(torchvision.models, name)(num_classes=num_classes)
    if name == "googlenet":  # The zoo's has no auxiliary heads.
        return torchvision.models.googlenet(
            num_classes=num_classes, aux_logits=False, init_weights=True
        )
    if name.startswith(("vgg", "resnext", "wide_resnet", "densenet")):
        return getattr(torchvision.models, name)(num_classes=num_classes)
    if name.startswith(("mobilenet_v", "efficientnet_b")):
        import torchvision

        return getattr(torchvision.models, name)(num_classes=num_classes)
    if name in ("convnext_tiny", "vit_b_16"):
        import torchvision

        return getattr(torchvision.models, name)(num_classes=num_classes)
    raise KeyError(f"no PyTorch twin for {name!r}")


# Parameters of more than one axis that get no weight decay (zoo.training.state.decay_mask).
NO_DECAY = ("class_token", "pos_embedding")


def trainable_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
