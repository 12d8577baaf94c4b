"""Write a large MLP with external data (default ~4 GB: 64 layers of 4096 x 4096 float32, ReLU),
one weight at a time, so generating it needs little memory. For benchmarks; never committed.

    python tools/make_big_mlp.py /tmp/big/mlp.onnx [--width 4096] [--layers 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

ALIGN = 1 << 16


def write(path: Path, width: int, layers: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    nodes, inits, current = [], [], "x"
    with open(path.parent / data_name, "wb") as data:
        def add(name: str, values: np.ndarray) -> None:
            offset = -(-data.tell() // ALIGN) * ALIGN
            data.write(b"\0" * (offset - data.tell()))
            data.write(values.tobytes())
            tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=values.shape)
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(values.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            inits.append(tensor)

        for i in range(layers):
            w = rng.standard_normal((width, width), dtype=np.float32)
            w *= np.float32(np.sqrt(2.0 / width))
            add(f"layers.{i}.weight", w)
            add(f"layers.{i}.bias", np.full(width, 0.01, np.float32))
            nodes += [helper.make_node("MatMul", [current, f"layers.{i}.weight"], [f"m{i}"], name=f"layers.{i}"),
                      helper.make_node("Add", [f"m{i}", f"layers.{i}.bias"], [f"a{i}"], name=f"layers.{i}.add"),
                      helper.make_node("Relu", [f"a{i}"], [f"r{i}"], name=f"layers.{i}.relu")]
            current = f"r{i}"
        add("head.weight", rng.standard_normal((width, 16), dtype=np.float32) / np.float32(np.sqrt(width)))
        nodes.append(helper.make_node("MatMul", [current, "head.weight"], ["y"], name="head"))
    graph = helper.make_graph(nodes, "big_mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", type=Path)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--layers", type=int, default=64)
    args = parser.parse_args()
    write(args.path, args.width, args.layers)


if __name__ == "__main__":
    main()
