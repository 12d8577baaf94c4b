"""Regenerate the tiny Hugging Face transformer exports under models/.

Run from the repository root with an interpreter that has torch, transformers, onnx, onnxscript
and onnxruntime:

    /work/venv-torch/bin/python tools/export_transformer_models.py [gpt2 bert ...]

Nothing is downloaded: each model is built from a config object with seeded random weights
(fan-in scaled; norm scales and biases non-trivial too, so no norm or bias is an identity), in eval
mode, without KV cache (use_cache=False) and with the "eager" attention implementation (plain
MatMul/Softmax, which both exporters trace). Each is written twice, like
tools/export_torch_models.py: `models/hf_<arch>.onnx` by the legacy TorchScript exporter
(dynamo=False, opset 17) and `models/hf_<arch>_dynamo.onnx` by the torch.export-based exporter
(dynamo=True, onnxscript's default optimization). Outputs are plain tensors (a wrapper turns
the model's output object into a tuple).

Every file is then checked: onnx.checker (full_check), run in onnxruntime and compared with
torch on the export example and, where an axis is declared dynamic, on a second batch and
sequence length; the max abs difference is printed and the run fails above 1e-4.

Task heads (token classification for BERT and T5, image classification for ViT) keep the hidden
stream internal, as in a model being trained further.

Dynamic axes: batch and sequence for the text models, batch for ViT (its image size is fixed
by the position table). Both exporters keep all of them dynamic (checked at a second size).

Tied embeddings: both exporters constant-fold GPT-2's LM head weight (the transposed token
embedding) into an initializer of its own, so `hf_gpt2*.onnx` hold two copies. TIED models are
also exported a third time, by the legacy exporter without constant folding, as
`hf_<arch>_tied.onnx`: there the one embedding initializer is read by the input Gather and,
through a Transpose, by the LM head MatMul.

The dynamo exporter records each node's Python stack trace (this machine's source paths; most
of the file) in its metadata; that one key is dropped, the other metadata are kept.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "models"
OPSET = 17
VOCAB = 64
TOLERANCE = 1e-4


@dataclass
class Spec:
    """How to build one architecture and feed it."""

    build: Callable[[], nn.Module]        # the bare Hugging Face model (random weights)
    inputs: Callable[[int, int], dict[str, torch.Tensor]]  # (batch, seq) -> keyword inputs
    outputs: list[str]                    # attributes of the model output, in order
    axes: dict[str, dict[int, str]]       # per input: dynamic axes


# ----------------------------------------------------------------------------- configs


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=32,
                        bos_token_id=0, eos_token_id=1, tie_word_embeddings=True)
    return GPT2LMHeadModel(config)


def _bert() -> nn.Module:
    from transformers import BertConfig, BertForTokenClassification

    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        vocab_size=VOCAB, max_position_embeddings=32, type_vocab_size=2, pad_token_id=0,
                        num_labels=3)
    return BertForTokenClassification(config)


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=1, pad_token_id=None, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForTokenClassification

    config = T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, vocab_size=VOCAB,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
                      num_labels=3, classifier_dropout=0.0)
    return T5ForTokenClassification(config)


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                       image_size=32, patch_size=8, num_channels=3, num_labels=3)
    return ViTForImageClassification(config)


def _ids(batch: int, seq: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq))


def _mask(batch: int, seq: int) -> torch.Tensor:
    """All ones except the last two positions of the last row: real (right) padding. The causal
    models get one too: without it transformers looks for packed sequences with aten::diff,
    which the legacy exporter cannot export."""
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[-1, -2:] = 0
    return mask


TEXT = {0: "batch", 1: "seq"}
SPECS: dict[str, Spec] = {
    "gpt2": Spec(_gpt2, lambda b, s: {"input_ids": _ids(b, s), "attention_mask": _mask(b, s)}, ["logits"],
                 {"input_ids": TEXT, "attention_mask": TEXT}),
    "bert": Spec(_bert, lambda b, s: {"input_ids": _ids(b, s), "attention_mask": _mask(b, s),
                                      "token_type_ids": (torch.arange(s) >= s // 2).long().expand(b, s)},
                 ["logits"], {"input_ids": TEXT, "attention_mask": TEXT, "token_type_ids": TEXT}),
    "llama": Spec(_llama, lambda b, s: {"input_ids": _ids(b, s), "attention_mask": _mask(b, s)}, ["logits"],
                  {"input_ids": TEXT, "attention_mask": TEXT}),
    "t5_encoder": Spec(_t5, lambda b, s: {"input_ids": _ids(b, s), "attention_mask": _mask(b, s)},
                       ["logits"], {"input_ids": TEXT, "attention_mask": TEXT}),
    "vit": Spec(_vit, lambda b, s: {"pixel_values": torch.randn(b, 3, 32, 32)},
                ["logits"], {"pixel_values": {0: "batch"}}),
}

# LM heads that share the token embedding (see the module docstring)
TIED = {"gpt2"}

EXAMPLE = (2, 5)   # batch, seq of the export example
SECOND = (3, 7)    # and of the check on dynamic axes


# ----------------------------------------------------------------------------- building


class Exported(nn.Module):
    """Positional tensor inputs in, a tuple of tensors out, no cache."""

    def __init__(self, model: nn.Module, names: list[str], outputs: list[str]) -> None:
        super().__init__()
        self.model, self.names, self.outputs = model, names, outputs

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kwargs = dict(zip(self.names, args))
        if "use_cache" in self.model.forward.__code__.co_varnames:
            kwargs["use_cache"] = False
        out = self.model(**kwargs, return_dict=True)
        return tuple(getattr(out, name) for name in self.outputs)


def randomize(model: nn.Module) -> None:
    """Weights at fan-in scale (Hugging Face's std 0.02 would leave attention nearly uniform),
    norm scales around 1 and small random biases: none of them an identity or a zero."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if param.dim() > 1:
                param.normal_(0.0, float(param[0].numel()) ** -0.5)
            elif leaf == "bias":
                param.copy_(torch.randn_like(param) * 0.1)
            else:  # a 1-D weight is a norm's scale
                param.copy_(torch.empty_like(param).uniform_(0.5, 1.5))


def build(arch: str) -> tuple[Exported, dict[str, torch.Tensor]]:
    """The seeded eval-mode model and its example inputs; the same on every call."""
    spec = SPECS[arch]
    torch.manual_seed(0)
    model = spec.build()
    model.config.use_cache = False
    model.config._attn_implementation = "eager"
    randomize(model)
    model.eval()
    torch.manual_seed(1)
    inputs = spec.inputs(*EXAMPLE)
    return Exported(model, list(inputs), spec.outputs), inputs


def output_axes(arch: str) -> dict[str, dict[int, str]]:
    """Outputs are [batch, seq, ...] for text models, except the pooled [batch, hidden]."""
    text = any("seq" in axes.values() for axes in SPECS[arch].axes.values())
    return {name: {0: "batch", 1: "seq"} if text and name != "pooler_output" else {0: "batch"}
            for name in SPECS[arch].outputs}


def export_legacy(arch: str, path: Path, fold: bool = True) -> None:
    model, inputs = build(arch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings, legacy-exporter deprecation
        torch.onnx.export(
            model, tuple(inputs.values()), str(path), dynamo=False, opset_version=OPSET,
            input_names=list(inputs), output_names=SPECS[arch].outputs,
            dynamic_axes={**SPECS[arch].axes, **output_axes(arch)}, do_constant_folding=fold)


def export_unfolded(arch: str, path: Path) -> None:
    export_legacy(arch, path, fold=False)


def export_dynamo(arch: str, path: Path) -> None:
    model, inputs = build(arch)
    dims = {"batch": torch.export.Dim("batch", min=1, max=64), "seq": torch.export.Dim("seq", min=2, max=32)}
    shapes = tuple({i: dims[label] for i, label in SPECS[arch].axes[name].items()} for name in inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, tuple(inputs.values()), dynamo=True, input_names=list(inputs),
            output_names=SPECS[arch].outputs, dynamic_shapes=(shapes,), verbose=False)
    for node in program.model.graph.all_nodes():  # source paths of this machine; most of the file
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    program.save(str(path), external_data=False)


# ----------------------------------------------------------------------------- checking


def dynamic_labels(model: onnx.ModelProto) -> set[str]:
    return {d.dim_param for i in model.graph.input for d in i.type.tensor_type.shape.dim if d.dim_param}


def check(arch: str, path: Path) -> str:
    """Checker, onnxruntime and torch agree: on the example and, for dynamic axes, a second size."""
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    model, _ = build(arch)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    dynamic = dynamic_labels(proto)
    sizes = [EXAMPLE]
    if dynamic:
        sizes.append((SECOND[0] if "batch" in dynamic else EXAMPLE[0],
                      SECOND[1] if "seq" in dynamic else EXAMPLE[1]))
    notes = []
    for batch, seq in sizes:
        torch.manual_seed(2)
        inputs = SPECS[arch].inputs(batch, seq)
        with torch.no_grad():
            expected = model(*inputs.values())
        actual = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        diff = max(float(np.abs(a - e.numpy()).max()) for a, e in zip(actual, expected))
        if diff > TOLERANCE:
            raise AssertionError(f"{path.name}: onnxruntime differs from torch by {diff:.3g} at batch={batch}, seq={seq}")
        where = f"batch {batch}" + (f", seq {seq}" if "seq" in str(SPECS[arch].axes) else "")
        notes.append(f"{where}: {diff:.2g}")
    return f"dynamic: {', '.join(sorted(dynamic)) or 'none'}; max abs diff vs torch {'; '.join(notes)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", default=list(SPECS), help="architectures to export")
    parser.add_argument("--no-dynamo", action="store_true", help="skip the dynamo exports")
    args = parser.parse_args(argv)
    OUT_DIR.mkdir(exist_ok=True)
    failures = []
    start = time.perf_counter()
    for arch in args.names:
        jobs = [("legacy", export_legacy, OUT_DIR / f"hf_{arch}.onnx")]
        if not args.no_dynamo:
            jobs.append(("dynamo", export_dynamo, OUT_DIR / f"hf_{arch}_dynamo.onnx"))
        if arch in TIED:
            jobs.append(("legacy, unfolded", export_unfolded, OUT_DIR / f"hf_{arch}_tied.onnx"))
        for kind, export, path in jobs:
            try:
                export(arch, path)
                summary = check(arch, path)
                print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size} bytes); {summary}")
            except Exception:  # keep going: one exporter failing should not stop the rest
                traceback.print_exc()
                failures.append(f"{arch} ({kind})")
    print(f"{time.perf_counter() - start:.0f} s")
    if failures:
        print("FAILED: " + ", ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
