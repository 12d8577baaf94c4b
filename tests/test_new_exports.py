"""Exports whose analysis is still growing: tiny Hugging Face transformers (GPT-2, BERT,
LLaMA, T5 encoder, ViT; tools/export_transformer_models.py) and CNNs with split, shuffled or
normalized channels (GhostNet, ShuffleNet v1/v2, ConvNeXt, MLP-Mixer;
tools/export_torch_models.py), each from both torch exporters.

Group counts are not pinned here: they grow as the analysis learns these architectures.
What must hold now: every model loads, is analysed and runs, and every widening `inspect`
offers (each group alone, and all at once) reproduces the original's outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_net2net as n2n
from onnx_net2net.verification import compare, run
from test_exported_models import EXPECTED

MODELS = Path(__file__).resolve().parent.parent / "models"
CNNS = ["ghostnet", "shufflenet_v1", "shufflenet_v2", "convnext", "mixer"]
NEW = sorted([p.stem for p in MODELS.glob("hf_*.onnx")]
             + [f"torch_{name}{suffix}" for name in CNNS for suffix in ("", "_dynamo")])
DIMS = {"batch": 2, "seq": 5}
VOCAB = 64           # tools/export_transformer_models.py: every text model's vocabulary
TOKEN_TYPES = 2      # BERT's type_vocab_size


def feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs a tokenizer could produce: ids in the vocabulary, token types 0/1, a padding mask
    (the last row's last two positions off); images and other floats standard normal."""
    rng = np.random.default_rng(seed)
    weights = {t.name for t in model.graph.initializer}
    out = {}
    for value in model.graph.input:
        if value.name in weights:
            continue
        tensor = value.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else DIMS[d.dim_param] for d in tensor.shape.dim)
        if tensor.elem_type == onnx.TensorProto.FLOAT:
            out[value.name] = rng.standard_normal(shape).astype(np.float32)
        elif value.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[-1, -2:] = 0
            out[value.name] = mask
        elif value.name == "token_type_ids":
            out[value.name] = rng.integers(0, TOKEN_TYPES, shape).astype(np.int64)
        else:
            assert tensor.elem_type == onnx.TensorProto.INT64, value.name
            out[value.name] = rng.integers(0, VOCAB, shape).astype(np.int64)
    return out


@pytest.fixture(scope="module", params=NEW)
def exported(request):
    model = onnx.load(str(MODELS / f"{request.param}.onnx"))
    inputs = feeds(model)
    outputs = run(model, inputs)
    assert outputs and all(np.isfinite(o).all() for o in outputs)
    return request.param, model, inputs, n2n.inspect(model)


def widen_verified(model: onnx.ModelProto, inputs: dict, targets: dict, **kw) -> onnx.ModelProto:
    wide = n2n.widen(model, targets, verify=False, **kw)
    onnx.checker.check_model(wide, full_check=True)
    report = compare(model, wide, feeds=inputs, atol=1e-5, rtol=1e-5)
    assert report.passed, report
    return wide


def test_every_model_is_pinned_or_new():
    """A model under models/ is either pinned in test_exported_models.py or tested here."""
    for path in MODELS.glob("*.onnx"):
        assert path.stem in NEW or path.stem.removesuffix("_dynamo") in EXPECTED, path.name
    assert set(NEW) <= {p.stem for p in MODELS.glob("*.onnx")}


def test_analysis_succeeds(exported):
    name, model, _, inspection = exported
    assert inspection.groups, name
    producers = [p for g in inspection.groups for p in g["producers"]]
    assert len(producers) == len(set(producers)), "a layer produces two groups"
    for group in inspection.groups:
        assert group["widenable"] or group["reason"], group
        assert group["width"] > 0


def test_each_widenable_group_widens_alone(exported):
    name, model, inputs, inspection = exported
    for group in inspection.groups:
        if group["widenable"]:
            wide = widen_verified(model, inputs, {group["id"]: "x2"})
            widened = n2n.inspect(wide).groups
            assert any(g["width"] == 2 * group["width"] for g in widened), (name, group["id"])


def test_all_widenable_groups_widen_together(exported):
    name, model, inputs, inspection = exported
    wide = widen_verified(model, inputs, {}, widen_all="x2")
    grew = n2n.inspect(wide).parameters > inspection.parameters
    assert grew == any(g["widenable"] for g in inspection.groups), name


def test_every_deepen_point_deepens(exported):
    name, model, inputs, inspection = exported
    exact = [p["target"] for p in inspection.deepen if p["exact"]]
    for targets, residual in ((exact, False), ([p["target"] for p in inspection.deepen], True)):
        if targets:
            deep = n2n.deepen(model, targets, residual=residual, verify=False)
            onnx.checker.check_model(deep, full_check=True)
            assert compare(model, deep, feeds=inputs, atol=0.0, rtol=0.0).passed, (name, residual)
