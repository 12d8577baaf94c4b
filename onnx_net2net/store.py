"""Weights on disk: input weights memory-mapped instead of read, output weights written one
tensor at a time into a page-aligned external-data file (or streamed inline), so no step needs
every weight in memory at once.

A mapped array carries `n2n_source = (path, offset, length)`: where its bytes already are. Only
the exact array object a map returned carries it (numpy views and copies do not), so a value
that was changed is never mistaken for the bytes on disk.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper

# Entries start on these boundaries so onnxruntime can memory-map them (64 KiB: the largest
# allocation granularity, Windows'; small entries on a 4 KiB page).
ALIGN, SMALL_ALIGN = 1 << 16, 1 << 12
# Below this many bytes a weight stays inside the model file (onnx's own default).
EXTERNAL_THRESHOLD = 1024


def map_array(path: Path, offset: int, length: int, data_type: int, dims: list[int]) -> np.ndarray | None:
    """A read-only map of `length` bytes at `offset` of `path` as a tensor, or None when the bytes
    cannot be one as they lie (packed 4-bit types, a length that does not fit, a big-endian host)."""
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(data_type))
    except (KeyError, TypeError, ValueError):
        return None
    count = int(np.prod(dims, dtype=np.int64)) if dims else 1
    if sys.byteorder != "little" or data_type == onnx.TensorProto.STRING or count * dtype.itemsize != length \
            or length == 0 or offset + length > path.stat().st_size:
        return None
    array = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(int(d) for d in dims))
    array.n2n_source = (path, offset, length)
    return array


def drop_pages(values: np.ndarray) -> None:
    """Let the pages a read-only map of a weight has read go from this process (the kernel keeps
    them cached): reading a large weight slice by slice would otherwise keep all of it resident."""
    while values is not None:
        handle = getattr(values, "_mmap", None)
        if isinstance(handle, mmap.mmap):
            if getattr(values, "mode", None) == "r" and hasattr(mmap, "MADV_DONTNEED"):
                try:
                    handle.madvise(mmap.MADV_DONTNEED)
                except (OSError, ValueError):
                    pass
            return
        values = getattr(values, "base", None)


@contextlib.contextmanager
def shedding(arrays: list[np.ndarray], every: float = 0.05) -> Iterator[None]:
    """While a library reads these maps with the GIL released (safetensors writing a file), let
    the pages it has read go from this process every `every` seconds: all would stay resident."""
    done = threading.Event()

    def shed() -> None:
        while not done.wait(every):
            for values in arrays:
                drop_pages(values)

    helper = threading.Thread(target=shed, name="n2n-shed-pages", daemon=True)
    helper.start()
    try:
        yield
    finally:
        done.set()
        helper.join()


def source_of(values: object) -> tuple[Path, int, int] | None:
    return getattr(values, "n2n_source", None) if isinstance(values, np.memmap) else None


def raw_view(values: np.ndarray) -> memoryview:
    """The little-endian bytes of an array, without a copy when it is already contiguous."""
    array = np.ascontiguousarray(values)
    if array.dtype.kind in "fiuc" and array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return memoryview(array.reshape(-1).view(np.uint8))


def copy_range(source: Path, offset: int, length: int, target: BinaryIO) -> None:
    """Copy bytes file to file in the kernel where it can (no pages in this process)."""
    target.flush()
    with open(source, "rb") as src:
        done = 0
        try:
            while done < length:
                moved = os.copy_file_range(src.fileno(), target.fileno(), length - done, offset + done)
                if moved == 0:
                    break
                done += moved
        except (OSError, AttributeError):
            pass
        target.seek(0, os.SEEK_END)
        src.seek(offset + done)
        while done < length:
            chunk = src.read(min(length - done, 1 << 24))
            if not chunk:
                raise OSError(f"{source}: shorter than its external data entries say")
            target.write(chunk)
            done += len(chunk)


class WeightFile:
    """An external-data file being written: `put` stores an array now and returns a map of it,
    `entry` gives the (offset, length) of any array, writing or copying it when needed."""

    def __init__(self, handle: BinaryIO, path: Path) -> None:
        self.handle, self.path = handle, path
        self.handle.seek(0, os.SEEK_END)

    def _start(self, length: int) -> int:
        end = self.handle.tell()
        align = ALIGN if length >= ALIGN else SMALL_ALIGN
        offset = -(-end // align) * align
        if offset > end:
            self.handle.write(b"\0" * (offset - end))
        return offset

    def entry(self, values: np.ndarray) -> tuple[int, int]:
        source = source_of(values)
        if source is not None and source[0] == self.path:
            return source[1], source[2]
        length = int(values.nbytes)
        offset = self._start(length)
        if source is not None:
            copy_range(source[0], source[1], source[2], self.handle)
        else:
            self.handle.write(raw_view(values))
        return offset, length

    def reserve(self, shape: tuple[int, ...], dtype: np.dtype) -> Reserved | None:
        """Room for a weight written a slice at a time, or None when the result could not be
        mapped back (a big-endian host, a dtype onnx has no name for, a small weight)."""
        dtype = np.dtype(dtype)
        try:
            helper.np_dtype_to_tensor_dtype(dtype)
        except (KeyError, TypeError, ValueError):
            return None
        if sys.byteorder != "little" or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize < EXTERNAL_THRESHOLD:
            return None
        room = Reserved(self, 0, tuple(int(d) for d in shape), dtype)
        room.offset = self._start(room.length)
        self.handle.truncate(room.offset + room.length)
        self.handle.seek(0, os.SEEK_END)
        return room

    def put(self, values: np.ndarray) -> np.ndarray:
        """Write a new weight out of memory; what callers keep is a map of the file."""
        values = np.asarray(values)
        if values.nbytes < EXTERNAL_THRESHOLD or source_of(values) is not None:
            return values
        offset, length = self.entry(values)
        self.handle.flush()
        mapped = map_array(self.path, offset, length, helper.np_dtype_to_tensor_dtype(values.dtype), list(values.shape))
        return values if mapped is None else mapped


class Reserved:
    """A weight's place in a data file, written a slice at a time (slices.py)."""

    def __init__(self, file: WeightFile, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.file, self.offset, self.shape, self.dtype = file, offset, shape, dtype
        self.length = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize

    def write(self, block: np.ndarray, axis: int, start: int) -> None:
        """The weight's positions start.. along `axis` (every other axis whole)."""
        if all(d == 1 for d in self.shape[:axis]):  # one contiguous run of the file
            inner = int(np.prod(self.shape[axis + 1:], dtype=np.int64)) * self.dtype.itemsize
            data, at = raw_view(block), self.offset + start * inner
            while data:
                done = os.pwrite(self.file.handle.fileno(), data, at)
                data, at = data[done:], at + done
            return
        target = np.memmap(self.file.path, self.dtype, "r+", self.offset, self.shape)
        target[(slice(None),) * axis + (slice(start, start + block.shape[axis]),)] = block
        del target  # unmapped: its pages leave this process (the kernel writes them back, no msync)

    def finish(self) -> np.ndarray:
        """A read-only map of the weight written, which callers keep (as `put` returns)."""
        return map_array(self.file.path, self.offset, self.length, helper.np_dtype_to_tensor_dtype(self.dtype),
                         list(self.shape))


class Scratch:
    """An unnamed file beside an output (gone when closed or when the process dies) holding
    arrays made on the way that need not stay in memory."""

    def __init__(self, folder: Path) -> None:
        self.handle = tempfile.TemporaryFile(dir=folder)

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()

    def put(self, values: np.ndarray) -> np.ndarray:
        """Write an array out of memory; what callers keep is a read-only map of it."""
        values = np.ascontiguousarray(values)
        if values.nbytes < EXTERNAL_THRESHOLD:
            return values
        end = self.handle.seek(0, os.SEEK_END)
        offset = -(-end // SMALL_ALIGN) * SMALL_ALIGN
        self.handle.write(b"\0" * (offset - end))
        self.handle.write(raw_view(values))
        self.handle.flush()
        return np.memmap(self.handle, values.dtype, "r", offset, values.shape)

    def rows(self, shape: tuple[int, ...], dtype: np.dtype) -> ScratchRows:
        """Room for an array written a run of rows at a time."""
        dtype = np.dtype(dtype)
        end = self.handle.seek(0, os.SEEK_END)
        offset = -(-end // SMALL_ALIGN) * SMALL_ALIGN
        self.handle.truncate(offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        return ScratchRows(self.handle, offset, tuple(shape), dtype)


class ScratchRows:
    """An array in a scratch file, written by runs of rows (in any order), then mapped."""

    def __init__(self, handle: BinaryIO, offset: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.handle, self.offset, self.shape, self.dtype = handle, offset, shape, dtype
        self.row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize

    def write(self, block: np.ndarray, first: int) -> None:
        data, at = raw_view(block), self.offset + first * self.row
        while data:
            done = os.pwrite(self.handle.fileno(), data, at)
            data, at = data[done:], at + done

    def map(self) -> np.ndarray:
        return np.memmap(self.handle, self.dtype, "r", self.offset, self.shape)


def external_tensor(proto: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    proto.data_location = onnx.TensorProto.EXTERNAL
    del proto.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value


# --- inline models read as if their weights were external (the model file is the data file) ---

def _varint(buf, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("bad varint")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _fields(buf, start: int, end: int):
    """(number, wire type, field start, value start, value end) of each field in buf[start:end]."""
    pos = start
    while pos < end:
        first = pos
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, stop = _varint(buf, pos)
        elif wire == 1:
            stop = pos + 8
        elif wire == 2:
            length, pos = _varint(buf, pos)
            stop = pos + length
        elif wire == 5:
            stop = pos + 4
        else:
            raise ValueError(f"wire type {wire}")
        if stop > end:
            raise ValueError("truncated field")
        yield number, wire, first, pos, stop
        pos = stop


def _record(number: int, body: bytes) -> bytes:
    return encode_varint(number << 3 | 2) + encode_varint(len(body)) + body


def _tensor_without_data(buf, start: int, end: int, location: str) -> bytes:
    """A TensorProto's bytes with its raw_data (field 9) replaced by an external entry that
    points at where those bytes lie in the model file."""
    kept, raw, external = bytearray(), None, False
    for number, wire, first, value, stop in _fields(buf, start, end):
        if number == 9 and wire == 2:
            raw = (value, stop - value)
            continue
        external |= number in (13, 14)
        kept += buf[first:stop]
    if raw is None or external or raw[1] < EXTERNAL_THRESHOLD:
        return bytes(buf[start:end])
    entry = onnx.TensorProto()
    external_tensor(entry, location, raw[0], raw[1])
    return bytes(kept) + entry.SerializeToString()


def scan_inline(path: Path) -> onnx.ModelProto:
    """Parse a model whose weights are inline without reading them: every initializer's raw
    bytes of 1 KiB or more become an external entry into the model file itself. Raises
    ValueError on anything that is not plain protobuf (the caller then parses it normally)."""
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        out = bytearray()
        for number, wire, first, value, stop in _fields(buf, 0, len(buf)):
            if number != 7 or wire != 2:
                out += buf[first:stop]
                continue
            graph = bytearray()
            for g_number, g_wire, g_first, g_value, g_stop in _fields(buf, value, stop):
                if g_number == 5 and g_wire == 2:
                    graph += _record(5, _tensor_without_data(buf, g_value, g_stop, path.name))
                else:
                    graph += buf[g_first:g_stop]
            out += _record(7, bytes(graph))
    return onnx.ModelProto.FromString(bytes(out))
