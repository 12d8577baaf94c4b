"""Regenerate the small PyTorch-exported ONNX models under models/.

Run from the repository root with an interpreter that has torch, onnx and onnxscript:

    python3 -m venv /work/torchenv
    /work/torchenv/bin/pip install torch==2.13.0 onnx onnxscript numpy
    /work/torchenv/bin/python tools/export_torch_models.py

torch is only needed to regenerate these files; the test suite uses the committed .onnx files
and never imports torch.

Each model is written twice: `models/torch_<name>.onnx` by the legacy TorchScript exporter
(dynamo=False, opset 17) and `models/torch_<name>_dynamo.onnx` by the torch.export-based
exporter (dynamo=True). Everything is seeded, models are in eval mode and every BatchNorm gets
non-trivial running statistics and affine parameters, so no BatchNorm is an identity.
Inputs have a dynamic leading axis "batch" (and "seq" for gelu_mlp and transformers: LEGACY_AXES).

Both exporters fold an eval-mode BatchNorm into the preceding Conv by default (the legacy
exporter's eval peephole pass, the dynamo exporter's onnxscript fuse-batchnorm rewrite), which
would leave no BatchNormalization node to test. So the legacy export uses
training=TrainingMode.PRESERVE (the model stays in eval mode; constant folding still runs), and
the dynamo export runs torch's usual onnxscript optimization with only the BatchNorm-fusion
rules taken out. `--exporter-defaults` writes the exporters' untouched default output instead.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "models"
OPSET = 17


# ----------------------------------------------------------------------------- models


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class CNNBN(nn.Module):
    """Input [batch, 3, 8, 8]: one 2x2 max-pool leaves 16 channels of 4x4 for fc1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = F.relu(self.bn2(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Input [batch, 3, 16, 16]."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBN(3, 16)
        self.layer1 = BasicBlock(16, 16)
        self.layer2 = BasicBlock(16, 32, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.relu(self.bn(x)))
        return torch.cat([x, y], 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.relu(self.bn(x)))


class DenseNet(nn.Module):
    """Input [batch, 3, 16, 16]; dense block 8 -> 8 + 3*4 = 20 channels, transition to 16."""

    def __init__(self, growth: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.block = nn.Sequential(*(DenseLayer(8 + i * growth, growth) for i in range(3)))
        self.transition = Transition(8 + 3 * growth, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.transition(self.block(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, reduced)
        self.fc2 = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.flatten(self.pool(x), 1)
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(s))))
        return x * s[:, :, None, None]


class MobileNet(nn.Module):
    """Input [batch, 3, 16, 16]: conv, depthwise, pointwise, depthwise x2 multiplier, SE, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.dw1 = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pw1 = nn.Conv2d(8, 16, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.dw2 = nn.Conv2d(16, 32, 3, padding=1, groups=16, bias=False)
        self.bn4 = nn.BatchNorm2d(32)
        self.se = SqueezeExcite(32, 8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn1(self.conv1(x)))
        x = F.relu6(self.bn2(self.dw1(x)))
        x = F.relu6(self.bn3(self.pw1(x)))
        x = F.relu6(self.bn4(self.dw2(x)))
        x = self.se(x)
        return self.fc(torch.flatten(self.pool(x), 1))


class GeluMLP(nn.Module):
    """Input [batch, seq, 16]: pre-norm-free transformer MLP with residual, LayerNorm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(64, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.fc2(self.act(self.fc1(x)))
        return self.head(self.norm(x))


class GatedMLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x), input [batch, 16], hidden 32."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Linear(16, 32)
        self.w3 = nn.Linear(16, 32)
        self.w2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Transformer(nn.Module):
    """Input [batch, seq, 16]: one post-norm encoder layer, then a head on the mean over seq."""

    def __init__(self, activation: str = "relu") -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(
            d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, activation=activation,
            batch_first=True)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(dim=1))


class TransformerGelu(Transformer):
    def __init__(self) -> None:
        super().__init__(activation="gelu")


def conv_bn_act(cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1,
                act: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
    """torchvision's Conv2dNormActivation layout: 0 conv, 1 BatchNorm, 2 activation."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout), act())


class InvertedResidual(nn.Module):
    """MobileNetV2 block: expand 1x1, depthwise 3x3, linear project 1x1; add x if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 6) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn_act(cin, hidden, 1),
            conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->8 stride 2, blocks 8->8 (residual), 8->16 stride 2."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 8, 3, stride=2),
            InvertedResidual(8, 8, stride=1),
            InvertedResidual(8, 16, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SqueezeExcitation(nn.Module):
    """torchvision's conv-based SE: pool, 1x1 reduce, SiLU, 1x1 expand, sigmoid, scale."""

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = nn.SiLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(s)


class MBConv(nn.Module):
    """EfficientNet block: expand 1x1, depthwise 3x3, SE on the expanded channels, project, add."""

    def __init__(self, channels: int, expand: int = 4, squeeze: int = 4) -> None:
        super().__init__()
        hidden = channels * expand
        self.block = nn.Sequential(
            conv_bn_act(channels, hidden, 1, act=nn.SiLU),
            conv_bn_act(hidden, hidden, 3, groups=hidden, act=nn.SiLU),
            SqueezeExcitation(hidden, squeeze),
            nn.Sequential(nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class EfficientNet(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->8 stride 2, one MBConv (8->32->8), head 8->32, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            conv_bn_act(3, 8, 3, stride=2, act=nn.SiLU),
            MBConv(8),
            conv_bn_act(8, 32, 1, act=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle as the papers' code writes it: view, transpose, view."""
    batch, channels, height, width = x.size()
    x = x.view(batch, groups, channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batch, channels, height, width)


class GhostModule(nn.Module):
    """Half the output from a primary 1x1 conv, half from a cheap depthwise conv on it; Concat."""

    def __init__(self, cin: int, cout: int, relu: bool = True) -> None:
        super().__init__()
        self.cout = cout
        init = (cout + 1) // 2
        act: type[nn.Module] = nn.ReLU if relu else nn.Identity
        self.primary_conv = nn.Sequential(nn.Conv2d(cin, init, 1, bias=False), nn.BatchNorm2d(init), act())
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, init, 3, padding=1, groups=init, bias=False), nn.BatchNorm2d(init), act())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, :self.cout]


class GhostSE(nn.Module):
    """GhostNet's squeeze-excitation: pool, 1x1 reduce, ReLU, 1x1 expand, hard sigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.conv_expand(F.relu(self.conv_reduce(s)))
        return x * F.hardsigmoid(s)


class GhostBottleneck(nn.Module):
    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.ghost1 = GhostModule(channels, hidden)
        self.se = GhostSE(hidden, hidden // 4)
        self.ghost2 = GhostModule(hidden, channels, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ghost2(self.se(self.ghost1(x)))


class GhostNet(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->8 stride 2, two ghost bottlenecks (8->16->8), head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_stem = conv_bn_act(3, 8, 3, stride=2, act=nn.ReLU)
        self.blocks = nn.Sequential(GhostBottleneck(8, 16), GhostBottleneck(8, 16))
        self.conv_head = nn.Conv2d(8, 32, 1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.conv_stem(x))
        x = F.relu(self.conv_head(F.adaptive_avg_pool2d(x, 1)))
        return self.classifier(torch.flatten(x, 1))


class ShuffleV1Unit(nn.Module):
    """Grouped 1x1, channel shuffle, depthwise 3x3, grouped 1x1; Add (stride 1) or Concat with
    the average-pooled input (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2, mid: int | None = None) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout
        mid = mid or branch // 2
        self.gconv1 = nn.Conv2d(cin, mid, 1, groups=groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.dwconv = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.gconv2 = nn.Conv2d(mid, branch, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.gconv1(x)))
        out = channel_shuffle(out, self.groups)
        out = self.bn2(self.dwconv(out))
        out = self.bn3(self.gconv2(out))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, stride=2, padding=1), out], 1))
        return F.relu(x + out)


class ShuffleNetV1G3(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->12, a stride-2 unit 12->48 (Concat of 12 pooled and
    36 new channels), two stride-1 units (Add), fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(3, 12, 3, stride=2, act=nn.ReLU)
        # the paper's unit at three groups: the bottleneck is a quarter of the output (12), so
        # the shuffled channels' conv groups (3 groups of 4) cut across the shuffle's
        self.stage2 = nn.Sequential(*(ShuffleV1Unit(cin, 48, stride, groups=3, mid=12)
                                      for cin, stride in ((12, 2), (48, 1), (48, 1))))
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.conv1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ShuffleNetV1(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->8, a stride-2 unit 8->16 (Concat), a stride-1 unit (Add)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(3, 8, 3, stride=2, act=nn.ReLU)
        self.stage2 = nn.Sequential(ShuffleV1Unit(8, 16, stride=2), ShuffleV1Unit(16, 16, stride=1))
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.conv1(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class ShuffleV2Unit(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual: stride 1 splits the channels in two (chunk)
    and transforms one half; stride 2 transforms both copies; Concat, then shuffle by 2."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Conv2d(cin, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.branch2 = nn.Sequential(
            nn.Conv2d(cin if stride > 1 else half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, stride=stride, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """Input [batch, 3, 16, 16]: stem 3->8, units 8->16 (stride 2) and 16->16, conv5 16->32, fc."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(3, 8, 3, stride=2, act=nn.ReLU)
        self.stage2 = nn.Sequential(ShuffleV2Unit(8, 16, stride=2), ShuffleV2Unit(16, 16, stride=1))
        self.conv5 = conv_bn_act(16, 32, 1, act=nn.ReLU)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage2(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


class ShuffleNetV2Deep(nn.Module):
    """torchvision's stage layout (a stride-2 unit, then stride-1 units) at 4 units of 24
    channels: every split of a shuffled stage halves the runs of channels that move together
    (12, 6, 3), so the fourth unit's split falls inside one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = conv_bn_act(3, 8, 3, stride=2, act=nn.ReLU)
        self.stage2 = nn.Sequential(ShuffleV2Unit(8, 24, stride=2), *(ShuffleV2Unit(24, 24, stride=1) for _ in range(3)))
        self.conv5 = conv_bn_act(24, 32, 1, act=nn.ReLU)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv5(self.stage2(self.conv1(x)))
        return self.fc(x.mean([2, 3]))


class LayerNorm2d(nn.Module):
    """ConvNeXt's channels-first LayerNorm, written out: mean and variance over axis 1."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels).uniform_(0.5, 1.5))
        self.bias = nn.Parameter(torch.randn(channels) * 0.1)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7, channels-last LayerNorm (permute, LayerNorm, Linear 4x, GELU, Linear),
    layer scale, permute back, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.empty(dim).uniform_(0.5, 1.5))  # non-trivial layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Input [batch, 3, 16, 16]: patchify stem 4x4/4 to 16 channels, channels-first LayerNorm,
    two blocks, global average pool, LayerNorm, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 4, stride=4), LayerNorm2d(16))
        self.stages = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
        self.norm = nn.LayerNorm(16, eps=1e-6)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(self.norm(x.mean([-2, -1])))


class MixerBlock(nn.Module):
    """Token mixing (an MLP over the patch axis, after a transpose), then channel mixing; both
    pre-norm with residuals."""

    def __init__(self, tokens: int, channels: int, token_hidden: int, channel_hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(channels)
        self.token_fc1 = nn.Linear(tokens, token_hidden)
        self.token_fc2 = nn.Linear(token_hidden, tokens)
        self.norm2 = nn.LayerNorm(channels)
        self.channel_fc1 = nn.Linear(channels, channel_hidden)
        self.channel_fc2 = nn.Linear(channel_hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x).transpose(1, 2)
        y = self.token_fc2(F.gelu(self.token_fc1(y)))
        x = x + y.transpose(1, 2)
        return x + self.channel_fc2(F.gelu(self.channel_fc1(self.norm2(x))))


class MLPMixer(nn.Module):
    """Input [batch, 3, 16, 16]: 4x4 patches (16 tokens) embedded to 24 channels, two mixer
    blocks, LayerNorm, mean over tokens, head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 24, 4, stride=4)
        self.blocks = nn.Sequential(MixerBlock(16, 24, 32, 48), MixerBlock(16, 24, 32, 48))
        self.norm = nn.LayerNorm(24)
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


class StackedAttention(nn.Module):
    """timm's ViT attention: one qkv Linear, `reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4)`,
    `unbind(0)` (or, `indexed`, torchvision Swin's `qkv[0], qkv[1], qkv[2]` with the head size
    and the query scale read off the input at runtime and the output reshaped to its width)."""

    def __init__(self, dim: int, heads: int, indexed: bool = False) -> None:
        super().__init__()
        self.heads, self.indexed = heads, indexed
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = (dim // heads) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        if self.indexed:
            qkv = self.qkv(x).reshape(x.size(0), x.size(1), 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scale = (C // self.heads) ** -0.5 if self.indexed else self.scale  # Swin reads it off the input
        attn = (q * scale @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, indexed: bool = False) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = StackedAttention(dim, heads, indexed)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmViT(nn.Module):
    """Input [batch, 3, 16, 16]: 4x4 patches embedded to 16, two blocks of 2 heads, head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.Sequential(ViTBlock(16, 2), ViTBlock(16, 2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(self.norm(x).mean(dim=1))


class TorchvisionViT(nn.Module):
    """torchvision's ViT encoder block: nn.MultiheadAttention (one in_proj, `unflatten`,
    `unsqueeze`, `transpose`, `squeeze`, then `proj[0], proj[1], proj[2]`), exported at batch 1
    as torchvision's models usually are (heads then fold into that batch axis of 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 4, stride=4)
        self.ln_1, self.ln_2 = nn.LayerNorm(16), nn.LayerNorm(16)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        y = self.ln_1(x)
        x = x + self.attention(y, y, y, need_weights=False)[0]
        x = x + self.mlp(self.ln_2(x))
        return self.head(x.mean(dim=1))


class SwinStage(nn.Module):
    """torchvision Swin's pieces: channels-last windows padded to a multiple of the window with
    pads computed from the input's shape, indexed qkv, then patch merging (four strided views
    concatenated, LayerNorm over all, Linear 4C -> 2C). Input [batch, 3, 12, 12]."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 16, 2, stride=2)
        self.block = ViTBlock(16, 2, indexed=True)
        self.window = 4
        self.merge_norm = nn.LayerNorm(64)
        self.reduction = nn.Linear(64, 32, bias=False)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).permute(0, 2, 3, 1)  # [B, 6, 6, 16]
        B, H, W, C = x.shape
        pad_b, pad_r = (self.window - H % self.window) % self.window, (self.window - W % self.window) % self.window
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        Hp, Wp = H + pad_b, W + pad_r
        windows = x.reshape(B, Hp // self.window, self.window, Wp // self.window, self.window, C)
        windows = windows.permute(0, 1, 3, 2, 4, 5).reshape(-1, self.window * self.window, C)
        windows = self.block(windows)
        x = windows.reshape(B, Hp // self.window, Wp // self.window, self.window, self.window, C)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, Hp, Wp, C)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        x = self.reduction(self.merge_norm(x))
        return self.head(x.mean(dim=(1, 2)))


class MixBlock(nn.Module):
    """MixNet's mixed depthwise conv: the channels split unevenly, each part with its own kernel
    size, concatenated back, a pointwise conv, a residual."""

    def __init__(self, channels: int, splits: list[int]) -> None:
        super().__init__()
        self.splits = splits
        self.convs = nn.ModuleList(nn.Conv2d(c, c, 2 * i + 3, padding=i + 1, groups=c) for i, c in enumerate(splits))
        self.bn = nn.BatchNorm2d(channels)
        self.pw = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, dim=1)
        y = torch.cat([conv(p) for conv, p in zip(self.convs, parts)], 1)
        return x + self.pw(F.relu(self.bn(y)))


class MixNet(nn.Module):
    """Input [batch, 3, 16, 16]: stem to 12 channels, blocks split 6/3/3 then 4/8."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, stride=2, padding=1)
        self.blocks = nn.Sequential(MixBlock(12, [6, 3, 3]), MixBlock(12, [4, 8]))
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


# name -> (constructor, example input shape with batch first, names of dynamic axes)
MODELS: dict[str, tuple[type[nn.Module], tuple[int, ...], dict[int, str]]] = {
    "mlp": (MLP, (2, 16), {0: "batch"}),
    "cnn_bn": (CNNBN, (2, 3, 8, 8), {0: "batch"}),
    "resnet": (ResNet, (2, 3, 16, 16), {0: "batch"}),
    "densenet": (DenseNet, (2, 3, 16, 16), {0: "batch"}),
    "mobilenet": (MobileNet, (2, 3, 16, 16), {0: "batch"}),
    "gelu_mlp": (GeluMLP, (2, 5, 16), {0: "batch", 1: "seq"}),
    "gated_mlp": (GatedMLP, (2, 16), {0: "batch"}),
    "transformer": (Transformer, (2, 5, 16), {0: "batch", 1: "seq"}),
    "transformer_gelu": (TransformerGelu, (2, 5, 16), {0: "batch", 1: "seq"}),
    "mobilenetv2": (MobileNetV2, (2, 3, 16, 16), {0: "batch"}),
    "efficientnet": (EfficientNet, (2, 3, 16, 16), {0: "batch"}),
    "ghostnet": (GhostNet, (2, 3, 16, 16), {0: "batch"}),
    "shufflenet_v1": (ShuffleNetV1, (2, 3, 16, 16), {0: "batch"}),
    "shufflenet_v2": (ShuffleNetV2, (2, 3, 16, 16), {0: "batch"}),
    "shufflenet_v1_g3": (ShuffleNetV1G3, (2, 3, 16, 16), {0: "batch"}),
    "shufflenet_v2_deep": (ShuffleNetV2Deep, (2, 3, 16, 16), {0: "batch"}),
    "convnext": (ConvNeXt, (2, 3, 16, 16), {0: "batch"}),
    "mixer": (MLPMixer, (2, 3, 16, 16), {0: "batch"}),
    "timm_vit": (TimmViT, (2, 3, 16, 16), {0: "batch"}),
    "swin": (SwinStage, (2, 3, 12, 12), {0: "batch"}),
    "mixnet": (MixNet, (2, 3, 16, 16), {0: "batch"}),
    "mha_vit": (TorchvisionViT, (1, 3, 16, 16), {}),
}

# Also written as the dynamo exporter's raw output (optimize=False, `torch_<name>_noopt_dynamo.onnx`):
# there a bias-free Conv's zero bias is a small constant subgraph (Shape of the weight, Expand,
# CastLike the input), which must fold so the model behaves like its optimized export.
UNOPTIMIZED = ("resnet",)

# The legacy tracer bakes the example's sequence length into nn.MultiheadAttention's key/value
# Reshapes (pytorch/pytorch#117209), so its transformer exports keep seq fixed at 5 rather than
# declare a dynamic axis they cannot honour. The dynamo exports keep both axes dynamic.
LEGACY_AXES: dict[str, dict[int, str]] = {
    "transformer": {0: "batch"},
    "transformer_gelu": {0: "batch"},
}


# ----------------------------------------------------------------------------- building


def randomize_norms(model: nn.Module) -> None:
    """Give every BatchNorm/LayerNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.copy_(torch.randn_like(module.running_mean) * 0.1)
                module.running_var.copy_(torch.empty_like(module.running_var).uniform_(0.5, 1.5))
                module.weight.copy_(torch.empty_like(module.weight).uniform_(0.5, 1.5))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)
            elif isinstance(module, nn.LayerNorm):
                module.weight.copy_(torch.empty_like(module.weight).uniform_(0.5, 1.5))
                module.bias.copy_(torch.randn_like(module.bias) * 0.1)


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    """The seeded eval-mode model and an example input; the same on every call."""
    ctor, shape, _ = MODELS[name]
    torch.manual_seed(0)
    model = ctor()
    randomize_norms(model)
    model.eval()
    return model, torch.randn(*shape)


def export_legacy(name: str, path: Path, keep_bn: bool = True) -> None:
    model, x = build(name)
    axes = LEGACY_AXES.get(name, MODELS[name][2])
    # PRESERVE (with the model in eval mode) skips the eval peephole pass that folds BN into Conv.
    training = torch.onnx.TrainingMode.PRESERVE if keep_bn else torch.onnx.TrainingMode.EVAL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # legacy-exporter deprecation, constant folding + PRESERVE
        torch.onnx.export(
            model, (x,), str(path), dynamo=False, opset_version=OPSET,
            input_names=["x"], output_names=["y"],
            dynamic_axes={"x": axes, "y": {0: "batch"} if 0 in axes else {}},
            training=training, do_constant_folding=True,
        )


@contextlib.contextmanager
def _without_bn_fusion():
    """Drop onnxscript's fuse-BatchNorm-into-Conv/Gemm rules from its default rewrite rules."""
    import onnxscript.rewriter as rewriter
    from onnxscript.rewriter.rules.common import _fuse_batchnorm

    saved = rewriter._DEFAULT_REWRITE_RULES
    fusion = {id(rule) for rule in _fuse_batchnorm.rules}
    rewriter._DEFAULT_REWRITE_RULES = tuple(r for r in saved if id(r) not in fusion)
    try:
        yield
    finally:
        rewriter._DEFAULT_REWRITE_RULES = saved


def export_dynamo(name: str, path: Path, keep_bn: bool = True, optimize: bool = True) -> None:
    model, x = build(name)
    axes = MODELS[name][2]
    dims = {i: torch.export.Dim(label) for i, label in axes.items()}
    program = torch.onnx.export(
        model, (x,), dynamo=True, input_names=["x"], output_names=["y"],
        dynamic_shapes={"x": dims}, optimize=optimize and not keep_bn, verbose=False,
    )
    if keep_bn and optimize:
        with _without_bn_fusion():
            program.optimize()  # what optimize=True would have run, minus the BN fusion
    program.save(str(path), external_data=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(MODELS), help="models to export")
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo exports")
    parser.add_argument("--exporter-defaults", action="store_true",
                        help="keep each exporter's default BatchNorm folding (no BN nodes left)")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(exist_ok=True)
    failures = []
    for name in args.names:
        jobs = [("legacy", export_legacy, OUT_DIR / f"torch_{name}.onnx")]
        if not args.no_dynamo:
            jobs.append(("dynamo", export_dynamo, OUT_DIR / f"torch_{name}_dynamo.onnx"))
        if not args.no_dynamo and name in UNOPTIMIZED:
            jobs.append(("dynamo, optimize=False", lambda n, p, keep_bn: export_dynamo(n, p, keep_bn, optimize=False),
                         OUT_DIR / f"torch_{name}_noopt_dynamo.onnx"))
        for kind, export, path in jobs:
            try:
                export(name, path, keep_bn=not args.exporter_defaults)
                print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")
            except Exception:  # keep going: one exporter failing should not stop the rest
                traceback.print_exc()
                failures.append(f"{name} ({kind})")
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
