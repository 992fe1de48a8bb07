"""Classifiers for adversarial training and evaluation, and the published-checkpoint loader.

Image models take inputs in [0, 1], normalise inside (``mean``/``std`` buffers, not saved in
the state dict, as in the reference code) and return logits. :class:`ToyMLP` is the exception:
it takes raw 2D coordinates (attack it with ``clip=None``).

:class:`WideResNet` is the DeepMind-style WRN of Gowal et al. (2020) used by Wang et al.
(ICML 2023, "Better Diffusion Models Further Improve Adversarial Training"); its parameter
names, padding and BN momentum follow ``core/models/wideresnetwithswish.py`` of
DM-Improves-AT so that the published checkpoints load unchanged (docs/science.md section 4).
"""
from __future__ import annotations

import math
import os
import re
from typing import Callable, Dict, Mapping, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
BN_MOMENTUM = 0.01  # PyTorch convention (new = 0.99 old + 0.01 batch), as in DM-Improves-AT
_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "swish": nn.SiLU}


def _activation(name: str) -> Callable[[], nn.Module]:
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {name!r}")
    return _ACTIVATIONS[name]


class _Normalized(nn.Module):
    """Base class: ``(x - mean) / std`` inside the model; buffers follow ``.to()`` but are not saved."""

    def _set_normalization(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


# ----------------------------------------------------------------------------- WideResNet

class _Block(nn.Module):
    """Pre-activation WRN block. Strided conv pads "SAME" by hand: (1,1,1,1) or (0,1,0,1)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, act: Callable[[], nn.Module]):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"unsupported stride {stride}")
        self.batchnorm_0 = nn.BatchNorm2d(in_planes, momentum=BN_MOMENTUM)
        self.relu_0 = act()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes, momentum=BN_MOMENTUM)
        self.relu_1 = act()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)
                         if in_planes != out_planes else None)
        self.pad = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.relu_0(self.batchnorm_0(x))
        skip = x if self.shortcut is None else self.shortcut(a)  # projection sees the activation
        out = self.conv_0(F.pad(a, self.pad))
        out = self.conv_1(self.relu_1(self.batchnorm_1(out)))
        return skip + out


class _BlockGroup(nn.Module):
    def __init__(self, num_blocks: int, in_planes: int, out_planes: int, stride: int, act):
        super().__init__()
        self.block = nn.Sequential(*[
            _Block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1, act)
            for i in range(num_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class WideResNet(_Normalized):
    """WideResNet-depth-width (Zagoruyko & Komodakis 2016), DeepMind variant, 32x32 inputs.

    ``(depth - 4) / 6`` blocks per group, channels ``16, 16w, 32w, 64w``; spatial sizes
    32 -> 32 -> 16 -> 8, then BN + activation, 8x8 average pool and ``logits``. SiLU
    ("swish") is the activation of the DM-Improves-AT models.
    """

    def __init__(self, depth: int = 28, width: int = 10, num_classes: int = 10, activation: str = "silu",
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        self.arch = f"WideResNet(depth={depth}, width={width}, num_classes={num_classes}, activation={activation})"
        self._set_normalization(mean, std)
        act, n = _activation(activation), (depth - 4) // 6
        c = [16, 16 * width, 32 * width, 64 * width]
        self.init_conv = nn.Conv2d(len(mean), c[0], 3, stride=1, padding=1, bias=False)
        self.layer = nn.Sequential(_BlockGroup(n, c[0], c[1], 1, act), _BlockGroup(n, c[1], c[2], 2, act),
                                   _BlockGroup(n, c[2], c[3], 2, act))
        self.batchnorm = nn.BatchNorm2d(c[3], momentum=BN_MOMENTUM)
        self.relu = act()
        self.logits = nn.Linear(c[3], num_classes)
        for m in self.modules():  # He init of the reference code
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.init_conv(self.normalize(x))  # (B, 16, 32, 32)
        out = self.layer(out)  # (B, 64w, 8, 8)
        out = self.relu(self.batchnorm(out))
        out = F.avg_pool2d(out, 8).flatten(1)  # (B, 64w)
        return self.logits(out)  # (B, K)


# ----------------------------------------------------------------------------- smaller models

class _PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int, act):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(in_planes), nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(planes), nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.act1, self.act2 = act(), act()
        self.shortcut = (nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))
                         if stride != 1 or in_planes != planes else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act1(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(a)
        return skip + self.conv2(self.act2(self.bn2(self.conv1(a))))


class PreActResNet18(_Normalized):
    """Pre-activation ResNet-18 (He et al., ECCV 2016), the usual fast-AT baseline (Rice et al. 2020)."""

    def __init__(self, num_classes: int = 10, activation: str = "relu",
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        self.arch = f"PreActResNet18(num_classes={num_classes}, activation={activation})"
        self._set_normalization(mean, std)
        act, in_planes = _activation(activation), 64
        self.conv1 = nn.Conv2d(len(mean), 64, 3, 1, 1, bias=False)
        for i, planes in enumerate((64, 128, 256, 512)):
            blocks = [_PreActBlock(in_planes, planes, 1 if i == 0 else 2, act), _PreActBlock(planes, planes, 1, act)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            in_planes = planes
        self.bn, self.act, self.linear = nn.BatchNorm2d(512), act(), nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))  # (B, 64, 32, 32)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 512, 4, 4)
        out = F.adaptive_avg_pool2d(self.act(self.bn(out)), 1).flatten(1)
        return self.linear(out)


class SmallCNN(_Normalized):
    """A small conv net with BatchNorm for CPU quick mode: 3 conv stages, global pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 3,
                 mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD):
        super().__init__()
        if len(mean) != in_channels:
            mean, std = (0.5,) * in_channels, (0.5,) * in_channels
        self.arch = f"SmallCNN(num_classes={num_classes}, width={width}, in_channels={in_channels})"
        self._set_normalization(mean, std)
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, 2, 1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU())
        self.logits = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(self.normalize(x))  # (B, 4w, H/4, W/4)
        return self.logits(F.adaptive_avg_pool2d(out, 1).flatten(1))


class ToyMLP(nn.Module):
    """MLP for 2D toy problems. Takes **raw coordinates** (no [0, 1] contract): attack with ``clip=None``."""

    def __init__(self, in_dim: int = 2, num_classes: int = 2, width: int = 64, depth: int = 2,
                 activation: str = "relu"):
        super().__init__()
        self.arch = f"ToyMLP(in_dim={in_dim}, num_classes={num_classes}, width={width}, depth={depth})"
        act, layers, d = _activation(activation), [], in_dim
        for _ in range(depth):
            layers += [nn.Linear(d, width), act()]
            d = width
        self.net = nn.Sequential(*layers, nn.Linear(d, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- registry

CLASSIFIERS: Dict[str, Callable[..., nn.Module]] = {
    "wideresnet": WideResNet,
    "wrn-28-10": lambda **kw: WideResNet(depth=28, width=10, **kw),
    "wrn-70-16": lambda **kw: WideResNet(depth=70, width=16, **kw),
    "preact-resnet18": PreActResNet18,
    "small-cnn": SmallCNN,
    "toy-mlp": ToyMLP,
}


def build_classifier(name: str, **kw) -> nn.Module:
    """Build a classifier by name (``'wrn-28-10'``, ``'preact-resnet18'``, ``'small-cnn'``, ...)."""
    key = name.lower().replace("_", "-")
    if key not in CLASSIFIERS:
        raise ValueError(f"unknown classifier {name!r}; known: {', '.join(sorted(CLASSIFIERS))}")
    return CLASSIFIERS[key](**kw)


# ----------------------------------------------------------------------------- checkpoints

class CheckpointMismatchError(ValueError):
    """The checkpoint's keys or shapes do not match the model it is loaded into."""


def _describe_wrn(state: Mapping[str, torch.Tensor]) -> str:
    """Guess the WideResNet a state dict comes from (for error messages)."""
    blocks = {int(m.group(1)) for k in state for m in [re.match(r"layer\.0\.block\.(\d+)\.", k)] if m}
    try:
        width = state["layer.0.block.0.conv_0.weight"].shape[0] // 16
        classes = state["logits.weight"].shape[0]
    except KeyError:
        return "not a DeepMind-style WideResNet"
    return f"looks like WideResNet(depth={6 * len(blocks) + 4}, width={width}, num_classes={classes})"


def load_published_checkpoint(path_or_state: Union[str, os.PathLike, Mapping], model: nn.Module, *,
                              key: str = "model_state_dict", map_location="cpu") -> nn.Module:
    """Load a DM-Improves-AT checkpoint (Wang et al. 2023) into ``model``, strictly.

    The published files (e.g. ``cifar10_linf_wrn28-10.pt``) are dicts with ``model_state_dict``
    (EMA weights) and ``unaveraged_model_state_dict``, keys prefixed ``module.0.``
    (``DataParallel(Sequential(model))``). The file is read with ``torch.load(weights_only=True)``;
    the prefix (``module.0.`` or ``module.``) is stripped; missing or unexpected keys and shape
    mismatches raise :class:`CheckpointMismatchError` naming the offending keys and the
    architecture expected. A plain state dict is accepted too. Returns ``model``.
    """
    obj = path_or_state
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(obj, map_location=map_location, weights_only=True)
    if not isinstance(obj, Mapping):
        raise CheckpointMismatchError(f"checkpoint is a {type(obj).__name__}, expected a dict")
    state = obj[key] if key in obj else obj
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointMismatchError(f"checkpoint has no {key!r} entry and is not a state dict; "
                                      f"top-level keys: {sorted(obj)[:8]}")
    for prefix in ("module.0.", "module."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
            break
    expected = model.state_dict()
    arch = getattr(model, "arch", type(model).__name__)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def few(items):
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        lines = [f"checkpoint does not match the expected architecture {arch}"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {few(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {few(unexpected)}")
        if shapes:
            lines.append(f"shape mismatches ({len(shapes)}): {few(shapes)}")
        lines.append(f"the checkpoint {_describe_wrn(state)}")
        raise CheckpointMismatchError("\n  ".join(lines))
    model.load_state_dict(state, strict=True)
    return model
