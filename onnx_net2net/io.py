"""Safe model loading and atomic saving: parse errors become clear errors, nothing is half-written,
inputs are never overwritten, and external data is read only from beside its model."""

from __future__ import annotations

import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import onnx
from onnx import numpy_helper
from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

from . import signals, store
from .errors import Net2NetError

# Protobuf cannot serialize a message of 2 GiB or more; such models must keep weights external.
PROTOBUF_LIMIT = 2**31 - 1


@dataclass
class LoadedModel:
    """A parsed model and where it came from (None for an in-memory ModelProto); `data_files`
    are the resolved external-data files it was read from (an output must never replace one)."""

    model: onnx.ModelProto
    path: Path | None
    external_data: bool
    data_files: frozenset[Path] = field(default_factory=frozenset)
    # mapped: the graph's initializers still point at their files (the model's own for inline
    # weights): a skeleton for analysis and streamed writes, never for onnxruntime or onnx.save
    mapped: bool = False


def real(path: str | os.PathLike[str]) -> Path:
    """The path a write would reach: symlinks and '..' resolved, missing components included."""
    return Path(os.path.realpath(os.fspath(path)))


def load_model(source: str | os.PathLike[str] | onnx.ModelProto | LoadedModel, mapped: bool = False) -> LoadedModel:
    """Load a path or accept a ModelProto; every failure is one clear Net2NetError. `mapped`
    leaves the main graph's weights on disk (checked, not read): see `store`."""
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, onnx.ModelProto):
        external = next((t for t in all_tensors(source) if uses_external_data(t)), None)
        if external is not None:
            raise Net2NetError(f"tensor '{external.name}' keeps its data in an external file that was not "
                               "loaded; pass the model's path so its data is read from beside it")
        return LoadedModel(source, None, False)
    path = Path(source)
    if not path.exists():
        raise Net2NetError(f"{path}: no such file")
    if path.is_dir():
        raise Net2NetError(f"{path}: is a directory, expected an .onnx file")
    model = None
    if mapped and not path.is_symlink():  # inline weights are mapped from the model file itself
        try:
            model = store.scan_inline(path)
        except Exception:  # not plain protobuf: parsed below, which words the error
            model = None
    if model is None:
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError or RuntimeWarning subclasses
            raise Net2NetError(f"{path}: not a valid ONNX model ({type(exc).__name__}: {exc})") from exc
    if not model.HasField("graph") or len(model.graph.node) == 0 and len(model.graph.output) == 0:
        raise Net2NetError(f"{path}: not a valid ONNX model (no graph)")
    data_files = load_external_data(model, path, keep_main=mapped)
    own = real(path)
    return LoadedModel(model, path, bool(data_files - {own}), frozenset(data_files), mapped)


def all_tensors(model: onnx.ModelProto, main_initializers: bool = True) -> Iterator[onnx.TensorProto]:
    """Every tensor a model holds: initializers, sparse initializers, attribute tensors (Constant
    values), in the main graph, in If/Loop/Scan bodies at any depth, in functions and in
    training info. onnx's own walk skips sparse tensors."""
    graphs: list[onnx.GraphProto] = [model.graph]
    for info in model.training_info:
        graphs += [info.initialization, info.algorithm]
    nodes: list[onnx.NodeProto] = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            if main_initializers or graph is not model.graph:
                yield from graph.initializer
            for sparse in graph.sparse_initializer:
                yield from (sparse.values, sparse.indices)
            nodes.extend(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            sparse_tensors = list(attribute.sparse_tensors)
            if attribute.HasField("sparse_tensor"):
                sparse_tensors.append(attribute.sparse_tensor)
            for sparse in sparse_tensors:
                yield from (sparse.values, sparse.indices)
            if attribute.HasField("g"):
                graphs.append(attribute.g)
            graphs.extend(attribute.graphs)


def load_external_data(model: onnx.ModelProto, path: Path, keep_main: bool = False) -> set[Path]:
    """Read every external tensor of the model at `path` into memory, from files inside the
    model's own folder only (never the working directory): a location must be relative,
    without '..', and must resolve to a regular file, not a symlink, inside that folder.
    With `keep_main`, the main graph's initializers are checked alike but left on disk.
    Returns the files used."""
    folder = real(path.parent)
    files: set[Path] = set()
    for tensor in all_tensors(model, main_initializers=not keep_main):
        if uses_external_data(tensor):
            files.add(_read_external(tensor, path, folder))
    for tensor in model.graph.initializer if keep_main else []:
        if uses_external_data(tensor):
            files.add(_read_external(tensor, path, folder, read=False))
    return files


def mapped_values(tensor: onnx.TensorProto, path: Path):
    """A kept tensor (see `load_external_data`) as a read-only map of its file, or None when
    its bytes cannot be mapped as they lie."""
    info = ExternalDataInfo(tensor)
    source = real(path.parent) / info.location
    length = info.length if info.length is not None else source.stat().st_size - (info.offset or 0)
    return store.map_array(source, info.offset or 0, length, tensor.data_type, list(tensor.dims))


def read_kept(tensor: onnx.TensorProto, path: Path) -> None:
    """Read a kept tensor into its proto after all (bytes no map can view)."""
    _read_external(tensor, path, real(path.parent))


def _read_external(tensor: onnx.TensorProto, path: Path, folder: Path, read: bool = True) -> Path:
    where = f"{path}: tensor '{tensor.name}'"
    try:
        with warnings.catch_warnings():  # unknown keys are ignored, as onnx does, without a warning line
            warnings.simplefilter("ignore")
            location = ExternalDataInfo(tensor).location
    except ValueError as exc:
        raise Net2NetError(f"{where}: bad external data entry ({exc})") from exc
    refuse = lambda why: Net2NetError(f"{where}: external data location {location!r} {why}")  # noqa: E731
    if not location or "\0" in location:
        raise refuse("is not a file name")
    if os.path.isabs(location) or re.match(r"[A-Za-z]:|[\\/]", location):
        raise refuse("is an absolute path; only files beside the model are read")
    if ".." in Path(location.replace("\\", "/")).parts:
        raise refuse("leaves the model's folder ('..'); only files beside the model are read")
    target = folder / location
    resolved = real(target)
    if not resolved.is_relative_to(folder):
        raise refuse("resolves out of the model's folder through a symbolic link")
    if target.is_symlink():
        raise refuse("is a symbolic link; only regular files beside the model are read")
    if not resolved.is_file():
        raise refuse("is not a file beside the model")
    if not read:
        return resolved
    try:
        load_external_data_for_tensor(tensor, str(folder))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise refuse(f"cannot be read ({first})") from exc
    return resolved


def data_path(output: Path) -> Path:
    """The external-data file written beside an output model."""
    return output.parent / f"{output.name}.data"


def check_output_path(output: str | os.PathLike[str], protected: Iterable[Path | None], force: bool,
                      with_data: bool = True) -> Path:
    """Where an output goes (resolved), refused before any work when it is an input of the run
    (a model, its data file, the plan; even with --force), an existing file without --force, a
    directory, or in a folder that cannot be written. A model's data file is checked alike."""
    out = real(output)
    inputs = {real(p) for p in protected if p is not None}
    if out.is_dir():
        raise Net2NetError(f"{output}: is a directory, expected a file path")
    for path in (out, data_path(out)) if with_data else (out,):
        if path in inputs or real(path) in inputs:
            raise Net2NetError(f"{path}: is an input of this run; it is never overwritten, even with --force")
        if os.path.lexists(path) and not force:
            raise Net2NetError(f"{path}: already exists; pass --force to overwrite it")
    check_writable(out.parent)
    return out


def check_writable(folder: Path) -> None:
    """Fail fast on a folder we could not write into: its nearest existing ancestor must be a
    writable directory (a missing folder is created when the output is written)."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise Net2NetError(f"{existing}: is not a directory, cannot create {folder}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Net2NetError(f"{existing}: folder is not writable")


# mkstemp names are PREFIX + 8 characters of this set + SUFFIX; leftovers of a killed run
# match exactly this pattern for one output.
_TEMP_CHARS = "[a-z0-9_]{8}"


def temp_pattern(target: Path) -> re.Pattern[str]:
    return re.compile(rf"\.{re.escape(target.name)}\.{_TEMP_CHARS}\.tmp")


def leftover_temps(targets: Iterable[Path]) -> list[Path]:
    """Temporary files of earlier, killed runs beside these outputs (and their data files)."""
    listings: dict[Path, list[str]] = {}
    found: list[Path] = []
    for target in targets:
        if target.parent not in listings:
            try:
                listings[target.parent] = sorted(p.name for p in target.parent.iterdir() if p.name.endswith(".tmp"))
            except OSError:
                listings[target.parent] = []
        for name in (target, data_path(target)):
            pattern = temp_pattern(name)
            found += [target.parent / n for n in listings[target.parent] if pattern.fullmatch(n)]
    return found


def _current_umask() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: the classic read, which briefly changes the process umask
    os.umask(mask)
    return mask


# Every temporary not yet renamed or removed, whoever made it: a stop signal can land between
# a temporary's creation and the `try` meant to clean it up, so the command line's last word
# on an interruption is to remove what is still here (`discard_uncommitted`).
_UNCOMMITTED: set[Path] = set()


def discard_uncommitted() -> None:
    """Remove every temporary output file this process created and did not rename into place."""
    with signals.deferred():
        for tmp in list(_UNCOMMITTED):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        _UNCOMMITTED.clear()


class _AtomicFiles:
    """Temporary files created with mkstemp (O_EXCL, mode set from the umask) beside their
    targets, renamed into place by commit(); every one not committed is removed on failure."""

    def __init__(self) -> None:
        self.mode = 0o666 & ~_current_umask()
        self.pending: list[tuple[Path, Path]] = []

    def open(self, target: Path) -> BinaryIO:
        with signals.deferred():  # a file created is a file recorded, whenever a signal comes
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            self.pending.append((Path(name), target))
            _UNCOMMITTED.add(Path(name))
        os.fchmod(fd, self.mode)
        return os.fdopen(fd, "wb")

    def commit(self) -> None:
        """Rename in order (a model's data file before the model that refers to it), as one
        step for signals: a stop never leaves a new data file beside an old model."""
        with signals.deferred():
            while self.pending:
                tmp, target = self.pending[0]
                os.replace(tmp, target)
                self.pending.pop(0)
                _UNCOMMITTED.discard(tmp)

    def drop(self, target: Path) -> None:
        """Remove a temporary that will not be committed (scratch space)."""
        with signals.deferred():
            for item in [p for p in self.pending if p[1] == target]:
                item[0].unlink(missing_ok=True)
                self.pending.remove(item)
                _UNCOMMITTED.discard(item[0])

    def discard(self) -> None:
        with signals.deferred():  # a second Ctrl-C waits for the cleanup
            for tmp, _ in self.pending:
                try:
                    tmp.unlink(missing_ok=True)
                except OSError:
                    pass
                _UNCOMMITTED.discard(tmp)
            self.pending.clear()


def _write_atomically(output: str | os.PathLike[str], write) -> None:
    """Run `write(files)` with fresh temporaries and commit them; any failure (a full disk, a
    signal) removes them and an OSError becomes one clear error."""
    out = real(output)
    files = _AtomicFiles()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(files)
        files.commit()
    except OSError as exc:
        files.discard()
        raise Net2NetError(f"{out}: cannot write ({exc.strerror or exc})") from exc
    except BaseException:
        files.discard()
        raise


def save_model(model: onnx.ModelProto, output: str | os.PathLike[str], external_data: bool = False) -> None:
    """Write atomically (temporary file, then rename); weights go external when asked or too large."""
    out = real(output)
    if not external_data and weights_size(model) > PROTOBUF_LIMIT:
        external_data = True

    def write(files: _AtomicFiles) -> None:
        if external_data:
            # The model records the data file's final name; the data is renamed into place
            # before the model itself appears.
            with files.open(data_path(out)) as data, files.open(out) as handle:
                write_with_external_data(model, handle, data_path(out).name, data)
        else:
            with files.open(out) as handle:
                _write_streamed(model, handle)

    _write_atomically(out, write)


def write_with_external_data(model: onnx.ModelProto, handle: BinaryIO, data_name: str, data: BinaryIO) -> None:
    """Write weights of 1 KiB or more to one data file beside the model, without modifying
    `model` (onnx.save_model's external-data path converts the caller's tensors in place)."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
    offset = 0
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


def _write_streamed(model: onnx.ModelProto, handle: BinaryIO) -> None:
    """Serialize without building the whole file in memory: the model without its weights,
    then each weight as its own `graph { initializer { ... } }` record. Protobuf merges
    repeated occurrences of a message field, so readers see one graph with every weight."""
    skeleton = onnx.ModelProto()
    _copy_fields(model, skeleton, skip="graph")
    _copy_fields(model.graph, skeleton.graph, skip="initializer")
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
    """Atomic text write (reports): a reader never sees half a file, a failure leaves none."""
    save_bytes(output, text.encode())


def save_bytes(output: str | os.PathLike[str], payload: bytes) -> None:
    """Atomic write of a finished payload (reports, safetensors weights)."""
    out = real(output)

    def write(files: _AtomicFiles) -> None:
        with files.open(out) as handle:
            handle.write(payload)

    _write_atomically(out, write)


class StreamedOutput:
    """An output written while it is made: weights go into a temporary data file beside the
    target as they are produced (`weights`), `write` adds the model file (external data, or
    everything inline streamed from that file), `commit` renames them into place. Any
    failure before the commit removes every temporary, as `save_model` does."""

    def __init__(self, output: str | os.PathLike[str], external_data: str = "auto", source_external: bool = False):
        self.out = real(output)
        self.mode, self.source_external = external_data, source_external
        self.files = _AtomicFiles()
        self.model_path: Path | None = None
        self.external = True

    def __enter__(self) -> "StreamedOutput":
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.data = self.files.open(data_path(self.out))
            self.data_temp = self.files.pending[-1][0]
            self.weights = store.WeightFile(self.data, self.data_temp)
        except OSError as exc:
            self.files.discard()
            raise Net2NetError(f"{self.out}: cannot write ({exc.strerror or exc})") from exc
        except BaseException:  # a signal right after the file was created
            self.files.discard()
            raise
        return self

    def __exit__(self, kind, exc, trace) -> None:
        try:
            self.data.close()
        except OSError as error:  # buffered bytes that did not fit
            exc = exc or error
        finally:
            self.files.discard()  # nothing left once committed
        if isinstance(exc, OSError):
            raise Net2NetError(f"{self.out}: cannot write ({exc.strerror or exc})") from exc

    def write(self, model: onnx.ModelProto, source: Path | None = None) -> Path:
        """The model file, its weights in the data file under its temporary name (so that
        onnxruntime can run it from this folder before anything is renamed). Returns its path.
        Weights still naming the input's files (`source`: the input model) are copied over."""
        ours = self.weights.path.name
        for tensor in model.graph.initializer:
            if uses_external_data(tensor) and ExternalDataInfo(tensor).location != ours:
                info = ExternalDataInfo(tensor)
                if source is None:
                    raise Net2NetError(f"tensor '{tensor.name}' keeps its data in an external file that was not loaded")
                origin = real(source.parent) / info.location
                length = info.length if info.length is not None else origin.stat().st_size - (info.offset or 0)
                offset = self.weights._start(length)
                store.copy_range(origin, info.offset or 0, length, self.data)
                store.external_tensor(tensor, ours, offset, length)
        size = self.data.seek(0, os.SEEK_END)
        self.external = self.mode == "always" or self.mode == "auto" and (self.source_external or size > PROTOBUF_LIMIT)
        if not self.external and size > PROTOBUF_LIMIT:
            raise Net2NetError(f"{self.out}: {size / 2**30:.1f} GiB of weights cannot be one protobuf message "
                               "(2 GiB at most); write them as external data (--external-data auto or always)")
        self.data.flush()
        self.model = model
        handle = self.files.open(self.out)
        self.model_path = self.files.pending[-1][0]
        with handle:
            self._write_model(handle, self.data_temp.name)
        return self.model_path

    def extra(self, target: Path) -> Path:
        """A temporary for another file of this output (its weights as safetensors): renamed into
        place with it, before the model; removed with it on any failure. Returns its path."""
        target = real(target)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self.files.open(target).close()
        except OSError as exc:
            raise Net2NetError(f"{target}: cannot write ({exc.strerror or exc})") from exc
        entry = self.files.pending.pop()
        self.files.pending.insert(len(self.files.pending) - (self.model_path is not None), entry)
        return entry[0]

    def _write_model(self, handle: BinaryIO, location: str) -> None:
        if self.external:
            for tensor in self.model.graph.initializer:
                if uses_external_data(tensor):
                    tensor.external_data[0].value = location
            handle.write(self.model.SerializeToString())
            return
        skeleton = onnx.ModelProto()
        _copy_fields(self.model, skeleton, skip="graph")
        _copy_fields(self.model.graph, skeleton.graph, skip="initializer")
        handle.write(skeleton.SerializeToString())
        for tensor in self.model.graph.initializer:
            _write_inline(tensor, handle, self.data_temp)

    def commit(self) -> None:
        """Rename into place: the data file first, the model (now naming the data file's final
        name) last; an inline model's data file was scratch and is removed."""
        try:
            if self.external:
                with open(self.model_path, "r+b") as handle:  # only the location strings change
                    handle.truncate(0)
                    self._write_model(handle, data_path(self.out).name)
            else:
                self.files.drop(data_path(self.out))
            self.files.commit()
        except OSError as exc:
            self.files.discard()
            raise Net2NetError(f"{self.out}: cannot write ({exc.strerror or exc})") from exc
        except BaseException:
            self.files.discard()
            raise


def _write_inline(tensor: onnx.TensorProto, handle: BinaryIO, data: Path) -> None:
    """One initializer as its own `graph { initializer { ... } }` record (as `_write_streamed`
    does), its raw bytes copied from the data file (in the kernel where it can): field order as
    protobuf serializes it."""
    if not uses_external_data(tensor):
        body = tensor.SerializeToString()
        record = _GRAPH_INITIALIZER_TAG + _varint(len(body)) + body
        handle.write(_MODEL_GRAPH_TAG + _varint(len(record)))
        handle.write(record)
        return
    info = ExternalDataInfo(tensor)
    low, high = onnx.TensorProto(), onnx.TensorProto()
    low.CopyFrom(tensor)
    low.ClearField("external_data")
    low.ClearField("data_location")
    if tensor.HasField("doc_string"):  # fields numbered after raw_data (9) follow its bytes
        high.doc_string = tensor.doc_string
    low.ClearField("doc_string")
    if "metadata_props" in onnx.TensorProto.DESCRIPTOR.fields_by_name:
        high.metadata_props.extend(tensor.metadata_props)
        low.ClearField("metadata_props")
    head = low.SerializeToString() + bytes([9 << 3 | 2]) + _varint(info.length)
    tail = high.SerializeToString()
    body_size = len(head) + info.length + len(tail)
    record_head = _GRAPH_INITIALIZER_TAG + _varint(body_size)
    handle.write(_MODEL_GRAPH_TAG + _varint(len(record_head) + body_size) + record_head + head)
    store.copy_range(data, info.offset, info.length, handle)
    handle.write(tail)
