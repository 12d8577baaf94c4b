"""Safe model loading and atomic saving: parse errors become clear errors, nothing is half-written."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx.external_data_helper import uses_external_data

from .errors import Net2NetError

# Protobuf cannot serialize a message of 2 GiB or more; such models must keep weights external.
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class LoadedModel:
    """A parsed model and where it came from (None for an in-memory ModelProto)."""

    model: onnx.ModelProto
    path: Path | None
    external_data: bool


def load_model(source: str | os.PathLike[str] | onnx.ModelProto) -> LoadedModel:
    """Load a path or accept a ModelProto; every failure is one clear Net2NetError."""
    if isinstance(source, onnx.ModelProto):
        return LoadedModel(source, None, False)
    path = Path(source)
    if not path.exists():
        raise Net2NetError(f"{path}: no such file")
    if path.is_dir():
        raise Net2NetError(f"{path}: is a directory, expected an .onnx file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning subclasses
        raise Net2NetError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise Net2NetError(f"{path}: not a valid ONNX model (no graph)")
    external = any(uses_external_data(t) for t in model.graph.initializer)
    if external:
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            raise Net2NetError(f"{path}: cannot read its external data ({exc})") from exc
    return LoadedModel(model, path, external)


def check_output_path(output: str | os.PathLike[str], inputs: list[Path | None], force: bool) -> Path:
    """Refuse to overwrite an input model, or any existing file unless forced."""
    out = Path(output)
    for src in inputs:
        if src is not None and out.exists() and src.exists() and out.resolve() == src.resolve():
            if not force:
                raise Net2NetError(f"{out}: output is the input model; pass --force to overwrite it")
    if out.exists() and not force:
        raise Net2NetError(f"{out}: already exists; pass --force to overwrite it")
    if out.is_dir():
        raise Net2NetError(f"{out}: is a directory, expected a file path")
    return out


def save_model(model: onnx.ModelProto, output: str | os.PathLike[str], external_data: bool = False) -> None:
    """Write atomically (temporary file, then rename); weights go external when asked or too large."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not external_data and _weights_size(model) > _PROTOBUF_LIMIT:
        external_data = True
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    data_name = out.name + ".data"
    tmp_data = out.parent / f".{data_name}.tmp"
    try:
        if external_data:
            # The data file's name is recorded inside the model, so write it under a temporary
            # name that is renamed to the recorded one before the model itself appears.
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            for tensor in _external_tensors(model):
                for entry in tensor.external_data:
                    if entry.key == "location":
                        entry.value = data_name
            onnx.save_model(model, str(tmp))  # rewrite the small proto with the final data name
            os.replace(tmp_data, out.parent / data_name)
        else:
            _write_streamed(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_data.unlink(missing_ok=True)
        raise


def _write_streamed(model: onnx.ModelProto, path: Path) -> None:
    """Serialize without building the whole file in memory: the model without its weights,
    then each weight as its own `graph { initializer { ... } }` record. Protobuf merges
    repeated occurrences of a message field, so readers see one graph with every weight."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    with open(path, "wb") as handle:
        handle.write(skeleton.SerializeToString())
        for tensor in model.graph.initializer:
            body = tensor.SerializeToString()
            record = _GRAPH_INITIALIZER_TAG + _varint(len(body)) + body
            handle.write(_MODEL_GRAPH_TAG + _varint(len(record)))
            handle.write(record)


def _copy_fields(source, target, skip: str) -> None:
    for descriptor, value in source.ListFields():
        if descriptor.name == skip:
            continue
        field = getattr(target, descriptor.name)
        if descriptor.is_repeated:
            field.extend(value)
        elif descriptor.message_type is not None:
            field.CopyFrom(value)
        else:
            setattr(target, descriptor.name, value)


# Wire-format keys: ModelProto.graph is field 7, GraphProto.initializer field 5 (length-delimited).
_MODEL_GRAPH_TAG = bytes([7 << 3 | 2])
_GRAPH_INITIALIZER_TAG = bytes([5 << 3 | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _weights_size(model: onnx.ModelProto) -> int:
    """Bytes of raw weights: a cheap stand-in for ByteSize(), which walks the whole message."""
    total = 0
    for tensor in model.graph.initializer:
        if tensor.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            continue
        count = 1
        for d in tensor.dims:
            count *= d
        total += count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return total


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if uses_external_data(t)]


def save_text(output: str | os.PathLike[str], text: str) -> None:
    """Atomic text write (reports): a reader never sees half a file."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, out)
