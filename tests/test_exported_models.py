"""Models made by real exporters, committed under models/: torch.onnx (legacy and dynamo),
skl2onnx, tf2onnx (Keras) and jax2onnx."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import onnx_net2net as n2n
from helpers import initializer, widen_checked

MODELS = Path(__file__).resolve().parent.parent / "models"
ALL = sorted(p.stem for p in MODELS.glob("*.onnx"))

# Per exported model (torch legacy, dynamo and unoptimized dynamo exports agree): width groups found, widenable,
# deepen points found, exact with an identity layer. Pinned so coverage cannot silently drop.
EXPECTED = {
    "torch_cnn_bn": (4, 3, 4, 4), "torch_densenet": (6, 5, 6, 6), "torch_gated_mlp": (2, 1, 3, 2),
    "torch_gelu_mlp": (3, 1, 3, 2), "torch_mlp": (3, 2, 3, 3), "torch_mobilenet": (4, 3, 7, 6),
    "torch_resnet": (5, 4, 7, 7), "torch_transformer": (4, 1, 5, 5), "torch_transformer_gelu": (4, 1, 5, 4),
    "torch_mobilenetv2": (5, 4, 8, 8), "torch_efficientnet": (5, 4, 8, 2),
    # skl2onnx, tf2onnx (Keras 3) and jax2onnx exports (tools/export_other_models.py)
    "sklearn_mlp_classifier": (3, 2, 3, 3), "sklearn_mlp_regressor": (2, 1, 2, 1),
    "keras_mlp": (2, 1, 2, 2), "keras_cnn": (4, 3, 4, 3), "jax_mlp": (2, 1, 2, 2), "jax_cnn": (4, 3, 4, 4),
}


def load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / f"{name}.onnx"))


def pinned_as(name: str) -> str:
    """Legacy, dynamo and unoptimized dynamo exports of one architecture share their counts."""
    return name.removesuffix("_dynamo").removesuffix("_noopt")


ALL = [name for name in ALL if pinned_as(name) in EXPECTED]  # the rest: test_new_exports.py


@pytest.mark.parametrize("name", ALL)
def test_counts_are_pinned(name):
    found = n2n.inspect(MODELS / f"{name}.onnx")
    counts = (len(found.groups), sum(g["widenable"] for g in found.groups),
              len(found.deepen), sum(p["exact"] for p in found.deepen))
    assert counts == EXPECTED[pinned_as(name)]


@pytest.mark.parametrize("name", ALL)
def test_every_deepen_point_deepens(name):
    model = load(name)
    points = n2n.inspect(model).deepen
    deep = n2n.deepen(model, [p["target"] for p in points if p["exact"]], verify=False)
    onnx.checker.check_model(deep, full_check=True)
    assert n2n.verify(model, deep, atol=0.0, rtol=0.0).passed  # identity layers are bit-exact
    residual = n2n.deepen(model, [p["target"] for p in points], residual=True, verify=False)
    onnx.checker.check_model(residual, full_check=True)
    assert n2n.verify(model, residual, atol=0.0, rtol=0.0).passed


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
