"""Where a rewrite goes: a ModelProto in memory (the library's default), or an output file
written while the rewrite is made, one weight at a time, verified from the files on disk
before it is renamed into place."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import graph as G
from . import handoff as H
from . import store
from .io import LoadedModel, StreamedOutput
from .verification import Report, compare

EXTERNAL_DATA = ("auto", "always", "never")


class InMemory:
    """Today's path: every weight in the graph, a ModelProto at the end."""

    path: Path | None = None
    weights: store.WeightFile | None = None   # where new weights go as they are made (None: kept)

    def __enter__(self) -> "InMemory":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def spill(self, graph: gs.Graph) -> None:
        pass

    def export(self, graph: gs.Graph, loaded: LoadedModel) -> onnx.ModelProto:
        return G.export_model(graph, loaded.model)

    def compare(self, loaded: LoadedModel, model: onnx.ModelProto, options: dict) -> Report:
        return compare(loaded.model, model, **options)

    def save_weights(self, model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[str]:
        return H.save_weights(model, path)

    def commit(self) -> None:
        pass


class ToFile(InMemory):
    """New weights go to the output's data file as they are made; the result's ModelProto is the
    small model file (weights referenced, not held)."""

    def __init__(self, output: str | os.PathLike[str], external_data: str, loaded: LoadedModel) -> None:
        self.output = StreamedOutput(output, external_data, loaded.external_data)

    def __enter__(self) -> "ToFile":
        self.output.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.output.__exit__(*exc)

    @property
    def weights(self) -> store.WeightFile:
        return self.output.weights

    def spill(self, graph: gs.Graph) -> None:
        """Move new in-memory weights out to the file (after each inserted layer)."""
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Constant) and isinstance(tensor._values, np.ndarray) \
                    and store.source_of(tensor._values) is None and tensor._values.dtype.kind != "O":
                tensor.values = self.weights.put(tensor._values)

    def export(self, graph: gs.Graph, loaded: LoadedModel) -> onnx.ModelProto:
        model = G.export_model(graph, loaded.model, sink=self.output.weights)
        self.path = self.output.write(model, loaded.path)
        return model

    def compare(self, loaded: LoadedModel, model: onnx.ModelProto, options: dict) -> Report:
        return compare(loaded.model, model, **options, files=(loaded.path, self.path))

    def save_weights(self, model: onnx.ModelProto, path: str | os.PathLike[str]) -> list[str]:
        """The grown parameters as safetensors, read from the files being written (a weight
        transposed back goes through a scratch file), renamed into place with the model."""
        with store.Scratch(self.output.out.parent) as scratch:
            tensors = H.weights(model, self.path, spill=scratch.put)
            return H.write_weights_file(tensors, self.output.extra(Path(path)))

    def commit(self) -> None:
        self.output.commit()


def target(output: str | os.PathLike[str] | InMemory | None, external_data: str, loaded: LoadedModel):
    """A file output needs a model read from a path (its weights are read from beside it). A sink
    given instead belongs to the caller, who commits it (or drops it: a plan's step)."""
    if isinstance(output, InMemory):
        return Borrowed(output)
    if output is None:
        return InMemory()
    if loaded.path is None:
        raise ValueError("a streamed output needs a model loaded from a path")
    return ToFile(output, external_data, loaded)


class Borrowed:
    """A caller's sink, used as is: entering, committing and leaving it are the caller's."""

    def __init__(self, sink: InMemory) -> None:
        self.sink = sink

    def __enter__(self) -> "Borrowed":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def commit(self) -> None:
        pass

    def __getattr__(self, name: str):
        return getattr(self.sink, name)
