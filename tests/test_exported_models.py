"""Models made by real exporters (torch.onnx legacy and dynamo), committed under models/."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import onnx_net2net as n2n
from helpers import initializer, widen_checked

MODELS = Path(__file__).resolve().parent.parent / "models"
ALL = sorted(p.stem for p in MODELS.glob("*.onnx"))

# Width groups found and widenable per exported model; pinned so coverage cannot silently drop.
EXPECTED = {
    "torch_cnn_bn": (4, 3), "torch_densenet": (6, 5), "torch_gated_mlp": (2, 1), "torch_gelu_mlp": (3, 1),
    "torch_mlp": (3, 2), "torch_mobilenet": (5, 2), "torch_resnet": (5, 4),
}


def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / f"{name}.onnx"))


@pytest.mark.parametrize("name", ALL)
def test_group_counts_are_pinned(name):
    groups = n2n.inspect(MODELS / f"{name}.onnx").groups
    expected = EXPECTED[name.removesuffix("_dynamo")]
    assert (len(groups), sum(g["widenable"] for g in groups)) == expected


@pytest.mark.parametrize("name", ALL)
def test_every_widenable_group_widens_alone_and_together(name):
    model = load(name)
    widenable = [g["id"] for g in n2n.inspect(model).groups if g["widenable"]]
    for group in widenable:
        widen_checked(model, {group: "x1.5"})
    widen_checked(model, {group: "x2" for group in widenable})


@pytest.mark.parametrize("suffix", ["", "_dynamo"])
def test_pytorch_names_as_targets(suffix):
    """Users name layers as in their PyTorch code: module path or weight name."""
    model = load(f"torch_cnn_bn{suffix}")
    wide = widen_checked(model, {"conv2": 24, "fc1.weight": "x1.5"})
    assert initializer(wide, "conv2.weight").shape[0] == 24
    assert initializer(wide, "bn2.running_var").shape == (24,)
    assert initializer(wide, "fc1.weight").shape == (48, 24 * 4 * 4)


@pytest.mark.parametrize("suffix", ["", "_dynamo"])
def test_linear_exported_as_matmul_is_named_by_its_bias(suffix):
    model = load(f"torch_gelu_mlp{suffix}")
    wide = widen_checked(model, {"fc1": 96})
    assert initializer(wide, "fc1.bias").shape == (96,)


def test_residual_stream_is_one_group():
    groups = n2n.inspect(MODELS / "torch_resnet.onnx").groups
    stream = next(g for g in groups if "/stem/conv/Conv" in g["producers"])
    assert stream["producers"] == ["/stem/conv/Conv", "/layer1/conv2/Conv"]
