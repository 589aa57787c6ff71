"""Encoders: a torchvision backbone plus the MoCo-v2 projection head, looked up by name.

An :class:`Encoder` maps images ``(B, 3, H, W) float32`` to the backbone feature ``(B, F)`` and
the L2-normalised final embedding ``(B, D)``. The backbones are torchvision's own modules (ResNet
blocks, MobileNetV3, EfficientNet-B0) built with ``weights=None``, or any timm model as
``timm:NAME`` (``timm.create_model(NAME, pretrained=False, num_classes=0)``, its pooled pre-logits
feature); nothing is ever downloaded. Module names match the library's, so a torchvision or timm
state dict loads into ``Encoder.backbone`` and ``Encoder.backbone.state_dict()`` loads into the
library's own model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import efficientnet_b0, mobilenet_v3_large, mobilenet_v3_small
from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

from store.errors import ConfigError
from teacher_service.timm_models import create_timm

__all__ = [
    "ARCHS",
    "OUTPUTS",
    "TIMM_PREFIX",
    "ArchSpec",
    "Encoder",
    "EncoderConfig",
    "ProjectionHead",
    "ResNetBackbone",
    "TorchvisionBackbone",
    "arch_spec",
    "build_encoder",
    "count_parameters",
]

OUTPUTS = ("embedding", "feature", "both")


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture.

    ``family`` is "resnet", "torchvision" or "timm"; ResNets give ``block``, ``layers`` (blocks
    per stage) and a default base ``width``; torchvision backbones give a ``factory``; timm
    backbones are named ``timm:NAME`` and need no entry.
    """

    family: str
    block: type[BasicBlock] | type[Bottleneck] | None = None
    layers: tuple[int, int, int, int] | None = None
    width: int = 64
    factory: Callable[..., nn.Module] | None = None


ARCHS: dict[str, ArchSpec] = {
    "tiny": ArchSpec("resnet", BasicBlock, (1, 1, 1, 1), width=8),
    "resnet10": ArchSpec("resnet", BasicBlock, (1, 1, 1, 1)),
    "resnet18": ArchSpec("resnet", BasicBlock, (2, 2, 2, 2)),
    "resnet34": ArchSpec("resnet", BasicBlock, (3, 4, 6, 3)),
    "resnet50": ArchSpec("resnet", Bottleneck, (3, 4, 6, 3)),
    "resnet101": ArchSpec("resnet", Bottleneck, (3, 4, 23, 3)),
    "resnet152": ArchSpec("resnet", Bottleneck, (3, 8, 36, 3)),
    "mobilenet_v3_small": ArchSpec("torchvision", factory=mobilenet_v3_small),
    "mobilenet_v3_large": ArchSpec("torchvision", factory=mobilenet_v3_large),
    "efficientnet_b0": ArchSpec("torchvision", factory=efficientnet_b0),
}


TIMM_PREFIX = "timm:"
_TIMM_SPEC = ArchSpec("timm")


def arch_spec(name: str) -> ArchSpec:
    """The :class:`ArchSpec` of ``name`` (a key of ``ARCHS`` or ``timm:NAME``); an unknown name
    raises ``ConfigError`` listing the valid ones."""
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return _TIMM_SPEC
    try:
        return ARCHS[name]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {name!r}; valid names: {', '.join(sorted(ARCHS))}, "
            "or timm:NAME for any timm model"
        ) from None


_arch_spec = arch_spec


@dataclass
class EncoderConfig:
    """Architecture of an encoder: backbone, stem and projection head."""

    arch: str
    """Backbone name, a key of ``ARCHS``, or ``timm:NAME``."""
    head_hidden: int = 2048
    """Hidden width of the projection MLP (DisCo's bottleneck fix: 2048)."""
    head_out: int = 128
    """Output width D of the projection MLP (the final embedding)."""
    head_bn: bool = False
    """BatchNorm1d after the hidden Linear (FAIR's published heads have none)."""
    bn_groups: int = 1
    """Training-mode head BN normalises the batch in this many groups (shuffle-BN stand-in)."""
    small_stem: bool = False
    """3x3 stride-1 first conv and no max-pool, for images of 64 px or less."""
    width: int | None = None
    """ResNet base width (channels of conv1 / layer1); None = the architecture's default."""
    head: bool = True
    """False: no MLP; the embedding is the L2-normalised backbone feature."""

    def __post_init__(self) -> None:
        spec = _arch_spec(self.arch)
        if self.head_hidden < 1 or self.head_out < 1:
            raise ConfigError(
                f"head widths must be >= 1, got head_hidden={self.head_hidden}, "
                f"head_out={self.head_out}"
            )
        if self.bn_groups < 1:
            raise ConfigError(f"bn_groups must be >= 1, got {self.bn_groups}")
        if spec.family == "timm" and self.small_stem:
            raise ConfigError(
                f"small_stem does not apply to {self.arch} (it would change the timm model, and "
                "the exported backbone would no longer load into timm.create_model)"
            )
        if self.width is not None:
            if spec.family != "resnet":
                raise ConfigError(f"width applies to ResNet architectures only, not {self.arch!r}")
            if self.width < 1:
                raise ConfigError(f"width must be >= 1, got {self.width}")

    @property
    def resolved_width(self) -> int | None:
        """The ResNet base width actually built (None for non-ResNet backbones)."""
        spec = arch_spec(self.arch)
        if spec.family != "resnet":
            return None
        return self.width if self.width is not None else spec.width

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (JSON- and ``weights_only``-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ConfigError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown EncoderConfig keys: {', '.join(unknown)}")
        return cls(**data)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet without ``fc``, with a configurable base width and stem.

    Built from torchvision's ``BasicBlock``/``Bottleneck`` exactly as ``torchvision.models.ResNet``
    builds its stages (same module names and init), except that the base width (64 there) is a
    parameter. ``forward``: ``(B, 3, H, W) float32 -> (B, F) float32`` with
    ``F = 8 * width * block.expansion``.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        width: int = 64,
        small_stem: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = width
        if small_stem:
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = (
            nn.Identity() if small_stem else nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        )
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_dim = width * 8 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        stage: list[nn.Module] = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            stage.append(block(self.inplanes, planes))
        return nn.Sequential(*stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) float32 -> (B, F) float32`` globally average-pooled feature."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)


class TorchvisionBackbone(nn.Module):
    """A torchvision MobileNetV3 / EfficientNet without its classifier.

    Keeps torchvision's ``features`` and ``avgpool`` modules (so its state dict keys load).
    ``small_stem`` sets the first 3x3 conv's stride to 1. ``(B, 3, H, W) -> (B, F) float32``.
    """

    def __init__(self, factory: Callable[..., nn.Module], small_stem: bool = False) -> None:
        super().__init__()
        net = factory(weights=None)
        self.features: nn.Sequential = net.features  # type: ignore[assignment]
        self.avgpool: nn.Module = net.avgpool  # type: ignore[assignment]
        if small_stem:
            stem = self.features[0]
            assert isinstance(stem, nn.Sequential)
            stem_conv = stem[0]
            assert isinstance(stem_conv, nn.Conv2d)
            stem_conv.stride = (1, 1)
        last = self.features[-1]
        assert isinstance(last, nn.Sequential) and isinstance(last[0], nn.Conv2d)
        self.out_dim = int(last[0].out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W) float32 -> (B, F) float32`` globally average-pooled feature."""
        return torch.flatten(self.avgpool(self.features(x)), 1)


class ProjectionHead(nn.Module):
    """MoCo-v2 projection MLP: ``fc1`` (Linear) -> [``bn`` (BatchNorm1d)] -> ReLU -> ``fc2``.

    ``fc1``/``fc2`` correspond to ``fc.0``/``fc.2`` of FAIR's MoCo-v2 checkpoints. With ``bn`` and
    ``bn_groups > 1``, training-mode BN statistics are computed separately on ``bn_groups``
    consecutive slices of the batch (``torch.chunk``), the single-device stand-in for shuffle-BN;
    in eval mode the running statistics are used. ``(B, in_dim) -> (B, out_dim) float32``.
    """

    def __init__(
        self, in_dim: int, hidden: int, out: int, bn: bool = False, bn_groups: int = 1
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden)
        self.bn: nn.BatchNorm1d | None = nn.BatchNorm1d(hidden) if bn else None
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, out)
        self.bn_groups = bn_groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_dim) -> (B, out_dim)`` un-normalised projection."""
        h = self.fc1(x)
        if self.bn is not None:
            if self.training and self.bn_groups > 1 and h.shape[0] >= self.bn_groups:
                h = torch.cat([self.bn(c) for c in torch.chunk(h, self.bn_groups)], dim=0)
            else:
                h = self.bn(h)
        return self.fc2(self.relu(h))


class Encoder(nn.Module):
    """Backbone + optional projection head; the teacher and the student share this class.

    Attributes: ``config`` (:class:`EncoderConfig`), ``backbone`` (``(B,3,H,W) -> (B,F)``),
    ``head`` (:class:`ProjectionHead` or None), ``feature_dim`` F, ``embed_dim`` D.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        spec = arch_spec(config.arch)
        self.backbone: nn.Module
        if spec.family == "timm":
            name = config.arch[len(TIMM_PREFIX) :]
            self.backbone, _ = create_timm(name, None, f"student {config.arch}", pretrained=False)
            # Pooled pre-logits width: head_hidden_size where a conv head follows the pooling.
            width = getattr(self.backbone, "head_hidden_size", None)
            self.feature_dim: int = int(width or self.backbone.num_features)  # type: ignore[arg-type]
        elif spec.family == "resnet":
            assert spec.block is not None and spec.layers is not None
            width = config.resolved_width
            assert width is not None
            self.backbone = ResNetBackbone(spec.block, spec.layers, width, config.small_stem)
        else:
            assert spec.factory is not None
            self.backbone = TorchvisionBackbone(spec.factory, config.small_stem)
        if spec.family != "timm":
            self.feature_dim = int(self.backbone.out_dim)  # type: ignore[arg-type]
        self.head: ProjectionHead | None = None
        if config.head:
            self.head = ProjectionHead(
                self.feature_dim,
                config.head_hidden,
                config.head_out,
                bn=config.head_bn,
                bn_groups=config.bn_groups,
            )
        self.embed_dim: int = config.head_out if config.head else self.feature_dim

    def forward(
        self, x: torch.Tensor, output: str = "embedding"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder on ``x`` ``(B, 3, H, W) float32``.

        ``output``: "embedding" -> ``(B, D)`` L2-normalised final embedding; "feature" -> ``(B, F)``
        raw backbone feature; "both" -> ``(feature, embedding)``.
        """
        if output not in OUTPUTS:
            raise ConfigError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
        feature = self.backbone(x)
        if output == "feature":
            return feature
        z = self.head(feature) if self.head is not None else feature
        embedding = F.normalize(z.float(), dim=1)
        if output == "both":
            return feature, embedding
        return embedding


def build_encoder(config: EncoderConfig) -> Encoder:
    """Build a freshly initialised :class:`Encoder` (no pretrained weights are ever fetched)."""
    return Encoder(config)


def count_parameters(module: nn.Module) -> int:
    """Total number of parameter elements (trainable or not) in ``module``."""
    return sum(p.numel() for p in module.parameters())
