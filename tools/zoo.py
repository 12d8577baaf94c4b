"""onnx's wheel ships model-zoo architectures with constant weights; give them random ones.

Weights are drawn with fan-in scaling so activations keep a sane magnitude through deep nets,
and 1-D parameters (biases, BatchNorm statistics) are kept positive so variances are valid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnx_net2net import graph as G

ZOO_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
ZOO = ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
       "squeezenet", "vgg19", "zfnet512"]


def zoo_path(name: str) -> Path:
    return ZOO_DIR / f"light_{name}.onnx"


def randomize(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Fold the ConstantOfShape weights and replace every float constant with random values."""
    graph = G.import_model(model)
    rng = np.random.default_rng(seed)
    for tensor in graph.tensors().values():
        if not isinstance(tensor, gs.Constant) or np.dtype(tensor.dtype).kind != "f":
            continue
        shape = tuple(int(d) for d in tensor.shape)
        if len(shape) >= 2:
            fan_in = int(np.prod(shape[1:]))
            values = rng.standard_normal(shape) * np.sqrt(1.0 / max(fan_in, 1))
        else:
            values = rng.uniform(0.5, 1.5, size=shape)
        tensor.values = values.astype(tensor.dtype)
    return G.export_model(graph, model)


def zoo_model(name: str, seed: int = 0) -> onnx.ModelProto:
    return randomize(onnx.load(str(zoo_path(name))), seed)
