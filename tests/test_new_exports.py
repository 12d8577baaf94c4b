"""Exports whose analysis is still growing: tiny Hugging Face transformers (GPT-2, BERT,
LLaMA, T5 encoder, ViT; tools/export_transformer_models.py) and CNNs with split, shuffled or
normalized channels (GhostNet, ShuffleNet v1/v2, ConvNeXt, MLP-Mixer, MixNet) and vision
transformers written as timm and torchvision write them (a stacked qkv taken apart by index,
Swin's runtime pads, head size and query scale, patch merging, torch's nn.MultiheadAttention;
tools/export_torch_models.py),
each from both torch exporters.

Per model, the groups found, widenable, and widenable by kind are pinned (legacy and dynamo
exports agree), so coverage cannot silently drop; every model loads, is analysed and runs,
and every widening `inspect` offers (each group alone, and all at once) reproduces the
original's outputs. The transformers' only blocked group is their output (logits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

import onnx_net2net as n2n
from onnx_net2net.verification import compare, run
from test_exported_models import EXPECTED, pinned_as

MODELS = Path(__file__).resolve().parent.parent / "models"
CNNS = ["ghostnet", "shufflenet_v1", "shufflenet_v2", "shufflenet_v1_g3", "shufflenet_v2_deep", "convnext", "mixer",
        "timm_vit", "swin", "mixnet", "mha_vit"]
NEW = sorted([p.stem for p in MODELS.glob("hf_*.onnx")]
             + [f"torch_{name}{suffix}" for name in CNNS for suffix in ("", "_dynamo")])
DIMS = {"batch": 2, "seq": 5}
VOCAB = 64           # tools/export_transformer_models.py: every text model's vocabulary
TOKEN_TYPES = 2      # BERT's type_vocab_size


TRANSFORMER = {"hidden": 1, "heads": 2, "ffn": 2}
PINNED = {  # groups, widenable, widenable per kind
    "hf_bert": (6, 5, TRANSFORMER), "hf_gpt2": (6, 5, TRANSFORMER), "hf_gpt2_tied": (6, 5, TRANSFORMER),
    "hf_llama": (6, 5, TRANSFORMER), "hf_vit": (6, 5, TRANSFORMER),
    "hf_t5_encoder": (5, 4, {"hidden": 1, "heads": 1, "ffn": 2}),  # one head mapping: a shared position table
    "torch_convnext": (4, 3, {"hidden": 1, "ffn": 2}),
    "torch_ghostnet": (7, 6, {"channels": 6}), "torch_shufflenet_v1": (4, 3, {"channels": 3}),
    "torch_shufflenet_v2": (8, 7, {"channels": 7}), "torch_mixer": (8, 5, {"hidden": 1, "ffn": 4}),
    # [12 pooled; 36 new] channels read by 3-group convs whose groups of 16 cut across the parts
    "torch_shufflenet_v1_g3": (6, 5, {"channels": 5}),
    # four units: halves of 12, 6 and 3 channels (an odd cut) woven through three shuffles
    "torch_shufflenet_v2_deep": (12, 11, {"channels": 11}),
    "torch_timm_vit": (6, 5, TRANSFORMER),
    # one block, whose query scale is read off the hidden width at runtime (legacy export)
    "torch_swin": (5, 4, {"hidden": 1, "heads": 1, "ffn": 2}),
    # 12 channels split 6/3/3, then 4/8: cut at 4, 6 and 9 into four parts
    "torch_mixnet": (5, 4, {"channels": 4}),
    # nn.MultiheadAttention at batch 1: the stacked in_proj reached through unsqueeze/transpose/squeeze
    "torch_mha_vit": (4, 3, {"hidden": 1, "heads": 1, "ffn": 1}),
}


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
        assert path.stem in NEW or pinned_as(path.stem) in EXPECTED, path.name
    assert set(NEW) <= {p.stem for p in MODELS.glob("*.onnx")}


def test_counts_are_pinned(exported):
    name, _, _, inspection = exported
    kinds: dict[str, int] = {}
    for group in inspection.groups:
        if group["widenable"]:
            kinds[group["kind"]] = kinds.get(group["kind"], 0) + 1
    counts = (len(inspection.groups), sum(g["widenable"] for g in inspection.groups), kinds)
    assert counts == PINNED[name.removesuffix("_dynamo")], name


def test_normalized_streams_refuse_fractional_factors_naming_the_norm(exported):
    name, model, _, inspection = exported
    for group in inspection.groups:
        if group["widenable"] and group["family"] == "uniform":
            with pytest.raises(n2n.Net2NetError, match=r"integer factor") as info:
                n2n.widen(model, {group["id"]: "x1.5"}, verify=False)
            assert "Normalization" in str(info.value) or "ReduceMean" in str(info.value), name


def test_analysis_succeeds(exported):
    name, model, _, inspection = exported
    assert inspection.groups, name
    # a layer may sit in several groups: those its output is cut into (a split, a shuffled half)
    for group in inspection.groups:
        assert group["widenable"] or group["reason"], group
        assert group["width"] > 0


def test_each_widenable_group_widens_alone(exported):
    """Alone, or with the groups a grouped convolution reading across them ties it to."""
    name, model, inputs, inspection = exported
    for group in inspection.groups:
        if group["widenable"]:
            wide = widen_verified(model, inputs, {g: "x2" for g in [group["id"], *group["tied"]]})
            widened = n2n.inspect(wide).groups
            assert any(g["width"] == 2 * group["width"] for g in widened), (name, group["id"])


def test_all_widenable_groups_widen_together(exported):
    name, model, inputs, inspection = exported
    if not any(g["widenable"] for g in inspection.groups):
        with pytest.raises(n2n.Net2NetError, match="nothing to widen"):
            n2n.widen(model, {}, verify=False, widen_all="x2")
        return
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


def test_default_random_ids_stay_inside_the_tables():
    """BERT's token types index a table of two rows: default inputs must stay below that."""
    result = n2n.api.widen_model(str(MODELS / "hf_bert.onnx"), {}, widen_all="x2")
    assert result.report.passed
    assert any("'token_type_ids' indexes a table of 2 rows" in note for note in result.report.notes)
