"""Safe model loading and atomic saving: parse errors become clear errors, nothing is half-written."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import uses_external_data

from .errors import Net2NetError

# Protobuf cannot serialize a message of 2 GiB or more; such models must keep weights external.
PROTOBUF_LIMIT = 2**31 - 1


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
    if not external_data and weights_size(model) > PROTOBUF_LIMIT:
        external_data = True
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    data_name = out.name + ".data"
    tmp_data = out.parent / f".{data_name}.{tmp.name.rsplit('.', 2)[-2]}.tmp"
    try:
        if external_data:
            # The model records the data file's final name; the data is renamed into place
            # before the model itself appears.
            write_with_external_data(model, tmp, data_name, data_path=tmp_data)
            os.replace(tmp_data, out.parent / data_name)
        else:
            _write_streamed(model, tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_data.unlink(missing_ok=True)
        raise


def write_with_external_data(model: onnx.ModelProto, path: Path, data_name: str,
                             data_path: Path | None = None) -> None:
    """Write weights of 1 KiB or more to one data file beside the model, without modifying
    `model` (onnx.save_model's external-data path converts the caller's tensors in place)."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    offset = 0
    with open(data_path or path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            meta = skeleton.graph.initializer.add()
            if tensor.data_type == onnx.TensorProto.STRING or _tensor_bytes(tensor) < _EXTERNAL_THRESHOLD:
                meta.CopyFrom(tensor)
                continue
            payload = tensor.raw_data if tensor.HasField("raw_data") else _little_endian_bytes(tensor)
            meta.name, meta.data_type, meta.doc_string = tensor.name, tensor.data_type, tensor.doc_string
            meta.dims.extend(tensor.dims)
            meta.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(payload)))):
                entry = meta.external_data.add()
                entry.key, entry.value = key, value
            data.write(payload)
            offset += len(payload)
    with open(path, "wb") as handle:
        handle.write(skeleton.SerializeToString())


_EXTERNAL_THRESHOLD = 1024


def _little_endian_bytes(tensor: onnx.TensorProto) -> bytes:
    array = numpy_helper.to_array(tensor)
    return array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = 1
    for d in tensor.dims:
        count *= d
    return count * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


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


def weights_size(model: onnx.ModelProto) -> int:
    """Bytes of weights: a cheap stand-in for ByteSize(), which walks the whole message."""
    return sum(_tensor_bytes(t) for t in model.graph.initializer if t.data_type != onnx.TensorProto.STRING)


def save_text(output: str | os.PathLike[str], text: str) -> None:
    """Atomic text write (reports): a reader never sees half a file."""
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, out)
