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
            dynamic_axes={"x": axes, "y": {0: "batch"}},
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
