"""The fault matrix for files, paths, external data and signals.

Every case runs the command line on real files (in-process, or as a real subprocess with real
signals where the fault needs one) and asserts: the exit code, exactly one line on stderr and no
traceback, input bytes unchanged, nothing written outside the output folder, and no temporary
file left behind. Read-only and full filesystems are real tmpfs mounts (root only; skipped
with the reason otherwise).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnx_net2net as n2n
from onnx_net2net.cli import main
from onnx_net2net.io import all_tensors, load_model
from onnx_net2net.verification import compare

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "models" / "torch_mlp.onnx"
PLAN = "[[step]]\nwiden = { fc1 = 48 }\n"
TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # our temporary files: .NAME.XXXXXXXX.tmp


# ---------------------------------------------------------------------------------------------
# Running the tool and checking a case


class Outcome:
    def __init__(self, code: int, stderr: str, stdout: str = "") -> None:
        self.code, self.stderr, self.stdout = code, stderr, stdout


def cli(*args) -> Outcome:
    """In-process, through click (the working directory is the test's)."""
    result = CliRunner().invoke(main, [str(a) for a in args])
    return Outcome(result.exit_code, result.stderr, result.stdout)


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(*args, cwd: Path | None = None) -> Outcome:
    """As a real process of this checkout."""
    done = subprocess.run([sys.executable, "-m", "onnx_net2net", *map(str, args)], cwd=cwd, env=_env(),
                          capture_output=True, text=True, timeout=600)
    return Outcome(done.returncode, done.stderr, done.stdout)


def start(*args, cwd: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "onnx_net2net", *map(str, args)], cwd=cwd, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(root: Path) -> dict[str, str]:
    """Every entry under root: relative path -> content digest (symlinks by target)."""
    entries = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if path.is_symlink():
            entries[key] = "-> " + os.readlink(path)
        elif path.is_dir():
            entries[key + "/"] = "dir"
        else:
            entries[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return entries


class Scene:
    """A test's folder: snapshot it, run a case, then check what changed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.before = tree(root)

    def snapshot(self) -> None:
        self.before = tree(self.root)

    def changed(self) -> set[str]:
        after = tree(self.root)
        return {k for k in self.before.keys() | after.keys() if self.before.get(k) != after.get(k)}

    def check(self, outcome: Outcome, code: int, message: str, out: str | None = None) -> None:
        """Exit code, exactly one line on stderr naming the fault, no traceback, and clean()."""
        err = outcome.stderr.strip().splitlines()
        assert outcome.code == code, outcome.stderr
        assert len(err) == 1 and message in err[0], outcome.stderr
        assert "Traceback" not in outcome.stderr and "KeyboardInterrupt" not in outcome.stderr
        self.clean(out)

    def clean(self, out: str | None = None) -> None:
        """Nothing changed outside `out` (a folder relative to root; None: nothing changed at
        all, inputs included) and no new temporary file anywhere."""
        changed = self.changed()
        outside = {k for k in changed if out is None or not (k == out + "/" or k.startswith(out + "/"))}
        assert not outside, f"written outside the output folder: {sorted(outside)}"
        leftovers = [k for k in tree(self.root) if TEMP.match(Path(k).name) and k not in self.before]
        assert not leftovers, f"temporary files left: {leftovers}"


@pytest.fixture
def scene(tmp_path, monkeypatch) -> Scene:
    monkeypatch.chdir(tmp_path)
    return Scene(tmp_path)


def external_copy(path: Path, location: str | None = None) -> Path:
    """torch_mlp with every weight in one external data file beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx.load(str(MLP)), str(path), save_as_external_data=True,
                    location=location or path.name + ".data", size_threshold=0)
    return path


def matches_original(path: Path) -> bool:
    return n2n.verify(MLP, path).outputs[0].max_abs == 0.0


# ---------------------------------------------------------------------------------------------
# 2. An input is never overwritten: reports, data files, unresolved paths


def test_report_never_replaces_an_input_model(scene):
    shutil.copy(MLP, "m.onnx")
    Path("plan.toml").write_text(PLAN)
    scene.snapshot()
    for extra in ([], ["--force"]):
        scene.check(cli("apply", "plan.toml", "m.onnx", "-o", "out", "--report", "m.onnx", *extra), 2,
                    "m.onnx: is an input of this run; it is never overwritten, even with --force")
        scene.check(cli("apply", "plan.toml", "m.onnx", "-o", "out", "--report", "plan.toml", *extra), 2,
                    "plan.toml: is an input of this run")
    assert not Path("out").exists()


def test_report_never_replaces_an_output_or_an_input_data_file(scene):
    external_copy(scene.root / "in" / "v1.onnx", location="w.data")
    Path("plan.toml").write_text(PLAN)
    scene.snapshot()
    scene.check(cli("apply", "plan.toml", "in/v1.onnx", "-o", "out", "--report", "out/v1.onnx", "--force"), 2,
                "out/v1.onnx: is an output of this run")
    scene.check(cli("apply", "plan.toml", "in/v1.onnx", "-o", "out", "--report", "out/v1.onnx.data"), 2,
                "out/v1.onnx.data: is an output of this run")
    scene.check(cli("apply", "plan.toml", "in/v1.onnx", "-o", "out", "--report", "in/w.data", "--force"), 2,
                "in/w.data: is an input of this run")
    assert matches_original(scene.root / "in" / "v1.onnx")


def test_existing_report_needs_force(scene):
    shutil.copy(MLP, "m.onnx")
    Path("plan.toml").write_text(PLAN)
    Path("report.json").write_text("{}")
    scene.snapshot()
    scene.check(cli("apply", "plan.toml", "m.onnx", "-o", "out", "--report", "report.json"), 2,
                "report.json: already exists; pass --force")
    forced = cli("apply", "plan.toml", "m.onnx", "-o", "out", "--report", "report.json", "--force")
    assert forced.code == 0, forced.stderr
    assert json.loads(Path("report.json").read_text())["summary"]["ok"] == 1


def test_output_never_replaces_the_data_file_of_its_input(scene):
    """v1's weights live in model.onnx.data: writing model.onnx (external) would replace them."""
    external_copy(scene.root / "v1.onnx", location="model.onnx.data")
    scene.snapshot()
    scene.check(cli("widen", "v1.onnx", "-o", "model.onnx", "fc1=48"), 2,
                "model.onnx.data: already exists; pass --force")
    scene.check(cli("widen", "v1.onnx", "-o", "model.onnx", "fc1=48", "--force"), 2,
                "model.onnx.data: is an input of this run; it is never overwritten, even with --force")
    scene.check(cli("deepen", "v1.onnx", "-o", "model.onnx", "fc1", "--force"), 2,
                "model.onnx.data: is an input of this run")
    assert matches_original(scene.root / "v1.onnx")


def test_existing_output_data_file_needs_force(scene):
    external_copy(scene.root / "m.onnx")
    Path("out").mkdir()
    Path("out/wide.onnx.data").write_bytes(b"someone else's weights")
    scene.snapshot()
    scene.check(cli("widen", "m.onnx", "-o", "out/wide.onnx", "fc1=48"), 2,
                "wide.onnx.data: already exists; pass --force to overwrite it")
    forced = cli("widen", "m.onnx", "-o", "out/wide.onnx", "fc1=48", "--force")
    assert forced.code == 0, forced.stderr
    assert n2n.verify("m.onnx", "out/wide.onnx").passed
    assert load_model("out/wide.onnx").data_files == {(scene.root / "out" / "wide.onnx.data").resolve()}


@pytest.mark.parametrize("output", ["./missing/../m.onnx", "missing/../m.onnx", "./link.onnx", "sub/../link.onnx"])
def test_unresolved_output_paths_cannot_reach_the_input(scene, output):
    shutil.copy(MLP, "m.onnx")
    Path("sub").mkdir()
    os.symlink("m.onnx", "link.onnx")
    scene.snapshot()
    for extra in ([], ["--force"]):
        scene.check(cli("widen", "m.onnx", "-o", output, "fc1=48", *extra), 2,
                    "m.onnx: is an input of this run; it is never overwritten")
    assert not Path("missing").exists()


def test_external_input_and_output_data_files_stay_consistent(scene):
    """A forced rewrite of another model into a folder keeps every model loadable."""
    external_copy(scene.root / "a" / "m.onnx")
    external_copy(scene.root / "b" / "m.onnx")
    Path("plan.toml").write_text(PLAN)
    scene.snapshot()
    done = cli("apply", "plan.toml", "a/m.onnx", "-o", "b", "--force")
    assert done.code == 0, done.stderr
    assert n2n.verify("a/m.onnx", "b/m.onnx").passed and matches_original(scene.root / "a" / "m.onnx")


# ---------------------------------------------------------------------------------------------
# 3. External data is read beside its model, wherever the tensor sits, never from the CWD


def _external(array: np.ndarray, name: str, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(array, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def decoy_model(folder: Path, placement: str, location: str = "w.bin") -> tuple[Path, np.ndarray]:
    """y = MatMul(Relu(MatMul(x, W1)), W2), plus z from an If; one tensor's data (the real
    values, returned) lives in `location` beside the model, given as `placement`."""
    rng = np.random.default_rng(1)
    real_values = rng.standard_normal((4, 8)).astype(np.float32)
    external = _external(real_values, "W1" if placement != "subgraph" else "C", location)
    w1 = external if placement == "initializer" else numpy_helper.from_array(
        rng.standard_normal((4, 8)).astype(np.float32), "W1")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["y"], name="fc2")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "W2")]
    if placement == "constant":
        nodes.insert(0, helper.make_node("Constant", [], ["W1"], name="w1_const", value=external))
    else:
        inits.append(w1)
    then_init = external if placement == "subgraph" else numpy_helper.from_array(np.ones((4, 8), np.float32), "C")
    branch = lambda name, init: helper.make_graph(  # noqa: E731
        [helper.make_node("Identity", [init.name], [name])], name, [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [4, 8])], [init])
    nodes.append(helper.make_node("If", ["c"], ["z"], name="choose", then_branch=branch("t", then_init),
                                  else_branch=branch("e", numpy_helper.from_array(np.zeros((4, 8), np.float32), "D"))))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4]),
                                           helper.make_tensor_value_info("c", TensorProto.BOOL, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    (folder / location).write_bytes(real_values.tobytes())
    return path, real_values


def sparse_model(folder: Path) -> tuple[Path, np.ndarray]:
    """y = MatMul(x, S) with S a sparse initializer whose values are external."""
    dense = np.zeros((4, 3), np.float32)
    dense[[0, 2, 3], [1, 0, 2]] = [1.5, -2.0, 0.25]
    flat = np.flatnonzero(dense).astype(np.int64)
    values = _external(dense.ravel()[flat], "S", "w.bin")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(flat, "S_idx"), [4, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "S"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    graph.sparse_initializer.append(sparse)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "m.onnx"))
    (folder / "w.bin").write_bytes(dense.ravel()[flat].tobytes())
    return folder / "m.onnx", dense


def _tensor(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in all_tensors(model) if t.name == name)


@pytest.mark.parametrize("placement", ["initializer", "constant", "subgraph"])
def test_external_data_is_read_beside_the_model_not_in_the_working_directory(tmp_path, placement):
    model, real_values = decoy_model(tmp_path / "a", placement)
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.bin").write_bytes((real_values * 0 + 7).tobytes())  # same name and size, other values
    scene = Scene(tmp_path)
    done = run("widen", "../a/m.onnx", "-o", "../out/wide.onnx", "W1=16", cwd=work)
    assert done.code == 0, done.stderr
    scene.clean(out="out")
    wide = onnx.load(str(tmp_path / "out" / "wide.onnx"))
    if placement == "subgraph":
        np.testing.assert_array_equal(_tensor(wide, "C"), real_values)
    else:
        np.testing.assert_array_equal(_tensor(wide, "W1")[:, :8], real_values)
    assert n2n.verify(model, tmp_path / "out" / "wide.onnx").passed

    (tmp_path / "a" / "w.bin").unlink()  # now only the decoy carries that name
    scene.snapshot()
    for args in (["verify", "../a/m.onnx", "../a/m.onnx"], ["widen", "../a/m.onnx", "-o", "../out2/w.onnx", "W1=16"]):
        scene.check(run(*args, cwd=work), 2, "external data location 'w.bin' is not a file beside the model")


def test_sparse_external_data_is_read_beside_the_model(tmp_path):
    model, dense = sparse_model(tmp_path / "a")
    work = tmp_path / "work"
    work.mkdir()
    (work / "w.bin").write_bytes(b"\0" * 12)
    scene = Scene(tmp_path)
    done = run("verify", "../a/m.onnx", "../a/m.onnx", "--json", cwd=work)
    assert done.code == 0 and json.loads(done.stdout)["passed"], done.stderr
    loaded = load_model(model)
    sparse = loaded.model.graph.sparse_initializer[0]
    assert numpy_helper.to_array(sparse.values).tolist() == [1.5, -2.0, 0.25]
    (tmp_path / "a" / "w.bin").unlink()
    scene.snapshot()
    scene.check(run("verify", "../a/m.onnx", "../a/m.onnx", cwd=work), 2, "tensor 'S'")


def test_verification_never_lets_onnxruntime_resolve_paths(tmp_path, monkeypatch):
    """A ModelProto still pointing at external data is refused rather than handed to onnxruntime,
    which would look for the file in the working directory."""
    model, real_values = decoy_model(tmp_path / "a", "constant")
    monkeypatch.chdir(tmp_path / "a")  # the file is right here, but only a path says where it belongs
    unloaded = onnx.load(str(model), load_external_data=False)
    for call in (lambda: n2n.verify(unloaded, unloaded), lambda: n2n.widen(unloaded, {"W1": 16}),
                 lambda: compare(unloaded, unloaded)):
        with pytest.raises(n2n.Net2NetError, match="tensor 'W1' keeps its data in an external file"):
            call()


@pytest.mark.parametrize("placement", ["constant", "subgraph"])
@pytest.mark.parametrize("location,message", [
    ("../outside.bin", "leaves the model's folder"),
    ("{abs}", "is an absolute path"),
    ("sub/../w.bin", "leaves the model's folder"),
    ("escape.bin", "resolves out of the model's folder through a symbolic link"),
    ("linkdir/outside.bin", "resolves out of the model's folder through a symbolic link"),
    ("inner.bin", "is a symbolic link"),
])
def test_external_data_containment_for_every_tensor(scene, placement, location, message):
    outside = scene.root / "outside.bin"
    model, real_values = decoy_model(scene.root / "a", placement)
    outside.write_bytes(real_values.tobytes())
    (scene.root / "a" / "sub").mkdir()
    os.symlink(outside, scene.root / "a" / "escape.bin")
    os.symlink(scene.root, scene.root / "a" / "linkdir")
    os.symlink("w.bin", scene.root / "a" / "inner.bin")
    location = location.format(abs=outside)
    proto = onnx.load(str(model), load_external_data=False)
    tensors = [a.t for n in proto.graph.node for a in n.attribute if a.HasField("t")] if placement == "constant" \
        else [i for n in proto.graph.node for a in n.attribute if a.HasField("g") for i in a.g.initializer]
    next(e for t in tensors for e in t.external_data if e.key == "location").value = location
    onnx.save(proto, str(model))
    scene.snapshot()
    scene.check(cli("inspect", model), 2, f"external data location '{location}' {message}")
    scene.check(cli("widen", model, "-o", "out/w.onnx", "W1=16"), 2, message)


# ---------------------------------------------------------------------------------------------
# 4 and 8. Signals: Ctrl-C exits 130, SIGTERM 143, both stop everything and leave no partial file


class Inotify:
    """Linux inotify on one path, to act at the exact moment a file is opened or created."""

    OPEN, CREATE = 0x20, 0x100

    def __init__(self, path: Path, mask: int) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK) if hasattr(libc, "inotify_init1") else -1
        if self.fd < 0 or libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            pytest.skip("needs Linux inotify to send signals at a known point of the run")
        self.buffer = b""

    def events(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return []
        data, names = os.read(self.fd, 65536), []
        while data:
            _, _, _, size = struct.unpack("iIII", data[:16])
            names.append(data[16:16 + size].rstrip(b"\0").decode())
            data = data[16 + size:]
        return names

    def wait(self, predicate, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in self.events(0.2):
                if predicate(name):
                    return name
        raise AssertionError("the awaited file event never came")

    def close(self) -> None:
        os.close(self.fd)


def big_mlp(path: Path, width: int = 1024, layers: int = 4) -> Path:
    """An MLP big enough to take a moment to widen, verify and write (12 MB, 48 MB widened)."""
    rng = np.random.default_rng(0)
    sizes = [64] + [width] * (layers - 1) + [8]
    nodes, inits, last = [], [], "x"
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((sizes[i], sizes[i + 1])) / np.sqrt(sizes[i]))
                                             .astype(np.float32), f"fc{i}.weight"))
        nodes.append(helper.make_node("MatMul", [last, f"fc{i}.weight"], [f"h{i}"], name=f"fc{i}"))
        last = f"h{i}"
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [last], [f"r{i}"], name=f"relu{i}"))
            last = f"r{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], inits)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


GROW = {"widen": ["--all", "x2"], "deepen": ["fc0", "fc1", "fc2"]}


@pytest.mark.parametrize("command", ["widen", "deepen"])
def test_ctrl_c_while_working_exits_130(tmp_path, command):
    model = big_mlp(tmp_path / "in" / "big.onnx")
    scene = Scene(tmp_path)
    watch = Inotify(model, Inotify.OPEN)
    process = start(command, model, "-o", tmp_path / "out" / "grown.onnx", *GROW[command])
    watch.wait(lambda name: True)  # the model is being read: imports are over, the work begins
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    watch.close()
    scene.check(Outcome(process.returncode, stderr), 130, "interrupted by SIGINT", out="out")
    assert not (tmp_path / "out" / "grown.onnx").exists()


@pytest.mark.parametrize("command", ["widen", "deepen"])
def test_sigterm_while_writing_leaves_no_temporary_file(tmp_path, command):
    model = big_mlp(tmp_path / "in" / "big.onnx")
    out = tmp_path / "out"
    out.mkdir()
    scene = Scene(tmp_path)
    watch = Inotify(out, Inotify.CREATE)
    process = start(command, model, "-o", out / "grown.onnx", *GROW[command])
    watch.wait(lambda name: name.startswith(".grown.onnx."))  # the output is being written
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    watch.close()
    scene.check(Outcome(process.returncode, stderr), 143, "interrupted by SIGTERM", out="out")
    written = list(out.iterdir())
    assert written == [] or n2n.verify(model, out / "grown.onnx").passed  # a complete file, or none


@pytest.mark.parametrize("command", ["widen", "deepen"])
def test_a_signal_between_creating_and_guarding_a_temporary_leaves_nothing(scene, monkeypatch, command):
    """The stop lands in the one place no `try` covers yet: the output's data file exists, the
    object that would remove it has not been entered."""
    from onnx_net2net import sink

    entered = sink.ToFile.__enter__

    def enter_then_stop(self):
        entered(self)
        assert any(TEMP.match(p.name) for p in (scene.root / "out").iterdir())
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(sink.ToFile, "__enter__", enter_then_stop)
    shutil.copy(MLP, scene.root / "mlp.onnx")
    scene.snapshot()
    outcome = cli({"widen": "widen", "deepen": "deepen"}[command], "mlp.onnx", "-o", "out/grown.onnx",
                  *({"widen": ["--all", "x2"], "deepen": ["fc1"]}[command]))
    scene.check(outcome, 143, "interrupted by SIGTERM", out="out")
    assert not (scene.root / "out" / "grown.onnx").exists()


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("kill", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_stopping_apply_stops_its_workers(tmp_path, kill):
    """SIGTERM stops the whole run like Ctrl-C (exit 143); even a parent killed outright takes
    its workers down with it (they clean up first)."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker processes")
    inputs = tmp_path / "in"
    for i in (1, 2):
        shutil.copy(big_mlp(inputs / "big_0.onnx"), inputs / f"big_{i}.onnx")
    (tmp_path / "plan.toml").write_text("[[step]]\nwiden = { all = 'x2' }\n")
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / ".big_2.onnx.k1ll3d00.tmp"  # left by an earlier, killed run: reported, kept
    earlier.write_bytes(b"partial")
    scene = Scene(tmp_path)
    watch = Inotify(out, Inotify.CREATE)
    process = start("apply", tmp_path / "plan.toml", inputs, "-o", out, "--workers", "2")
    watch.wait(lambda name: TEMP.match(name) is not None)  # a worker is writing its output
    workers = _children(process.pid)
    assert len(workers) >= 2
    process.send_signal(kill)
    _, stderr = process.communicate(timeout=300)  # also waits for the workers: they hold its stderr
    watch.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.1)
    assert not any(_alive(w) for w in workers), "workers outlived their parent"
    settled = tree(out)
    time.sleep(1.0)
    assert tree(out) == settled  # nobody is writing any more
    assert earlier.exists()
    lines = stderr.strip().splitlines()
    if kill == signal.SIGTERM:
        assert process.returncode == 143, stderr
        assert lines[-1].startswith("interrupted: ") and "Traceback" not in stderr
        assert sum(line.startswith("warning: 1 temporary file") for line in lines) == 1
    else:
        assert process.returncode == -signal.SIGKILL
    leftovers = [p.name for p in out.iterdir() if TEMP.match(p.name) and p != earlier]
    assert not leftovers
    assert not {k for k in scene.changed() if not k.startswith("out/")}
    for path in out.glob("*.onnx"):  # what was written is complete and correct
        assert n2n.verify(inputs / path.name, path).passed


# ---------------------------------------------------------------------------------------------
# 14. Files are created with the umask's mode, like any other file a user creates


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_outputs_respect_the_umask(scene, umask):
    external_copy(scene.root / "m.onnx")
    Path("plan.toml").write_text(PLAN)
    previous = os.umask(umask)
    try:
        assert cli("widen", "m.onnx", "-o", "out/wide.onnx", "fc1=48").code == 0
        assert cli("apply", "plan.toml", "m.onnx", "-o", "batch", "--workers", "1", "--report", "r.json").code == 0
    finally:
        os.umask(previous)
    for path in ("out/wide.onnx", "out/wide.onnx.data", "batch/m.onnx", "batch/m.onnx.data", "r.json"):
        assert (scene.root / path).stat().st_mode & 0o777 == 0o666 & ~umask, path


# ---------------------------------------------------------------------------------------------
# 16. Full disks and leftovers of killed runs


@contextmanager
def mounted(folder: Path, options: str):
    """A real tmpfs at `folder` (needs root and mount rights, else the test is skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a real full or read-only filesystem needs root (tmpfs mount)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_full_disk_while_writing_the_model(scene):
    shutil.copy(MLP, "m.onnx")
    with mounted(scene.root / "disk", "size=64k"):
        fill(scene.root / "disk")
        scene.snapshot()
        scene.check(cli("widen", "m.onnx", "-o", "disk/wide.onnx", "fc1=48"), 2,
                    "disk/wide.onnx: cannot write (No space left on device)")
        assert sorted(p.name for p in (scene.root / "disk").iterdir()) == ["filler"]


def test_full_disk_while_writing_the_report(scene):
    shutil.copy(MLP, "m.onnx")
    Path("plan.toml").write_text(PLAN)
    with mounted(scene.root / "disk", "size=64k"):
        fill(scene.root / "disk")
        scene.snapshot()
        done = cli("apply", "plan.toml", "m.onnx", "-o", "out", "--workers", "1", "--report", "disk/report.json")
        errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
        assert done.code == 2 and errors == [done.stderr.strip().splitlines()[-1]], done.stderr
        assert "disk/report.json: cannot write (No space left on device)" in errors[0]
        assert "Traceback" not in done.stderr
        assert sorted(p.name for p in (scene.root / "disk").iterdir()) == ["filler"]
        assert {k for k in scene.changed() if not k.startswith("out")} == set()


def test_leftovers_of_killed_runs_are_reported_in_one_line_and_kept(scene):
    shutil.copy(MLP, "m.onnx")
    Path("out").mkdir()
    ours = ["out/.wide.onnx.a1b2c3d4.tmp", "out/.wide.onnx.data.zz_00x9q.tmp"]
    others = ["out/.wide.onnx.notours.tmp", "out/.other.onnx.a1b2c3d4.tmp", "out/.wide.onnx.a1b2c3d4.tmp.bak"]
    for name in ours + others:
        Path(name).write_bytes(b"partial")
    scene.snapshot()
    done = cli("widen", "m.onnx", "-o", "out/wide.onnx", "fc1=48")
    assert done.code == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: 2 temporary files of an interrupted earlier run")
    assert all(str(scene.root / name) in warnings[0] for name in ours)
    assert not any(name.split("/")[1] in warnings[0] for name in others)
    assert all(Path(name).read_bytes() == b"partial" for name in ours + others)  # never deleted
    assert scene.changed() == {"out/wide.onnx"}


# ---------------------------------------------------------------------------------------------
# 17. The data file's temporary file is created like the model's: exclusive, unpredictable


def test_data_temp_file_is_unpredictable_and_never_follows_a_planted_link(tmp_path):
    model = external_copy(tmp_path / "in" / "m.onnx")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    watch = Inotify(out, Inotify.CREATE)
    process = start("widen", model, "-o", out / "wide.onnx", "fc1=48")
    created, planted = [], None
    while True:
        names = watch.events(0.05)
        created += names
        for name in names:
            found = re.fullmatch(r"\.wide\.onnx\.([a-z0-9_]{8})\.tmp", name)
            if found and planted is None:  # an attacker guessing the data file's temporary name
                planted = out / f".wide.onnx.data.{found.group(1)}.tmp"
                try:
                    os.symlink(victim, planted)
                except FileExistsError:
                    planted = None
        if not names and process.poll() is not None:
            break
    _, stderr = process.communicate(timeout=60)
    watch.close()
    assert process.returncode == 0, stderr
    assert victim.read_text() == "precious"
    model_temps = [n for n in created if re.fullmatch(r"\.wide\.onnx\.[a-z0-9_]{8}\.tmp", n)]
    data_temps = [n for n in created if re.fullmatch(r"\.wide\.onnx\.data\.[a-z0-9_]{8}\.tmp", n)
                  and (planted is None or n != planted.name)]
    assert len(model_temps) == 1 and len(data_temps) == 1
    assert model_temps[0].split(".")[-2] != data_temps[0].split(".")[-2]
    if planted is not None:
        planted.unlink()
    assert sorted(p.name for p in out.iterdir()) == ["wide.onnx", "wide.onnx.data"]
    assert not (out / "wide.onnx.data").is_symlink() and n2n.verify(model, out / "wide.onnx").passed


# ---------------------------------------------------------------------------------------------
# 18. An unwritable output folder is refused before any heavy work (the model is never opened)


@contextmanager
def read_only(folder: Path):
    if os.geteuid() == 0:
        with mounted(folder, "ro,size=64k"):
            yield folder
    else:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@pytest.mark.parametrize("case", ["widen", "deepen", "apply outdir", "apply report"])
def test_unwritable_folder_fails_before_any_work(scene, case):
    shutil.copy(MLP, "m.onnx")
    Path("plan.toml").write_text(PLAN)
    with read_only(scene.root / "ro") as ro:
        args = {"widen": ["widen", "m.onnx", "-o", ro / "sub" / "w.onnx", "fc1=48"],
                "deepen": ["deepen", "m.onnx", "-o", ro / "w.onnx", "fc1"],
                "apply outdir": ["apply", "plan.toml", "m.onnx", "-o", ro / "out"],
                "apply report": ["apply", "plan.toml", "m.onnx", "-o", "out", "--report", ro / "r.json"]}[case]
        scene.snapshot()
        watch = Inotify(scene.root / "m.onnx", Inotify.OPEN)
        outcome = cli(*args)
        opened = watch.events(0.1)
        watch.close()
        scene.check(outcome, 2, f"{ro}: folder is not writable")
        assert opened == [], "the model was read before the output folder was checked"
