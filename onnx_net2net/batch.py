"""Batch rewriting: one plan applied to many models, in worker processes, with a report.

Each model is loaded, given every step in order, verified once against its original, and
written atomically; a model that fails leaves nothing behind and never stops the others.
"""

from __future__ import annotations

import ctypes
import glob
import multiprocessing
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import onnx
from onnx.external_data_helper import uses_external_data

from . import api, sink
from . import handoff as H
from .errors import Net2NetError, VerificationError
from .io import LoadedModel, all_tensors, check_output_path, check_writable, data_path, discard_uncommitted, leftover_temps, load_model, real
from .plan import Plan
from .signals import Interrupted
from .verification import set_threads

MAX_DEFAULT_WORKERS = 4


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    weights: Path | None = None   # where the grown parameters go, when asked


def collect_models(items: list[str]) -> list[Path]:
    """Files, directories (their *.onnx) and glob patterns, in the order given, without repeats."""
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            matches = sorted(path.glob("*.onnx"))
        elif path.is_file():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item) if Path(p).is_file())
        if not matches:
            raise Net2NetError(f"{item}: no such model file, directory of .onnx files or matching pattern")
        found.extend(m for m in matches if m.resolve() not in {f.resolve() for f in found})
    return found


def plan_jobs(models: list[Path], outdir: str | Path, force: bool, weights: bool = False) -> list[Job]:
    """Outputs mirror input names under OUTDIR (resolved); clashes, inputs, their data files and
    existing files are refused up front, and so is an output folder that cannot be written.
    With `weights`, each model's grown parameters go beside it as NAME.safetensors."""
    folder = real(outdir)
    if folder.exists() and not folder.is_dir():
        raise Net2NetError(f"{outdir}: exists and is not a directory")
    check_writable(folder)
    jobs: list[Job] = []
    taken: dict[str, Path] = {}
    inputs = {real(m) for m in models}
    for model in models:
        output = folder / model.name
        for name in (output.name, data_path(output).name):
            if name in taken:
                raise Net2NetError(f"{model} and {taken[name]} would both write {folder / name}")
            taken[name] = model
        if real(output) in inputs:
            raise Net2NetError(f"{output}: would overwrite an input model; choose another output directory")
        weights_path = None
        if weights:
            weights_path = folder / (output.stem + ".safetensors")
            if weights_path.name in taken and taken[weights_path.name] != model:
                raise Net2NetError(f"{model} and {taken[weights_path.name]} would both write {weights_path}")
            taken[weights_path.name] = model
            weights_path = H.check_weights_path(weights_path, list(inputs), force, output)
        jobs.append(Job(model, check_output_path(output, inputs, force), weights_path))
    if force and any(os.path.lexists(p) for job in jobs for p in (job.output, data_path(job.output), job.weights)
                     if p is not None):
        data_files = input_data_files(models)  # only --force could replace one: read them only then
        for job in jobs:
            check_output_path(job.output, data_files, force)
            if job.weights is not None:
                check_output_path(job.weights, data_files, force, with_data=False)
    return jobs


def check_report(report: str | Path, jobs: list[Job], plan_file: str | Path, force: bool) -> Path:
    """The report never replaces the plan, an input, its data or an output (even with --force)."""
    if real(report) in {real(p) for job in jobs for p in (job.output, data_path(job.output))}:
        raise Net2NetError(f"{report}: is an output of this run; choose another report path")
    path = check_output_path(report, [Path(plan_file), *(job.source for job in jobs)], force, with_data=False)
    if force and os.path.lexists(path):
        check_output_path(report, input_data_files([j.source for j in jobs]), force, with_data=False)
    return path


def input_data_files(models: list[Path]) -> set[Path]:
    """External-data files the models refer to (resolved; a model that cannot be parsed has none
    here: it fails in its own job)."""
    found: set[Path] = set()
    for model in models:
        try:
            proto = onnx.load(str(model), load_external_data=False)
        except Exception:
            continue
        for tensor in all_tensors(proto):
            if uses_external_data(tensor):
                location = next((e.value for e in tensor.external_data if e.key == "location"), "")
                if location and "\0" not in location:
                    found.add(real(model.parent / location))
    return found


def default_workers(jobs: int) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_WORKERS, jobs))


def run_job(plan: Plan, job: Job) -> dict:
    """Apply every step to one model, verify once, write atomically; never raises.

    Weights stay on disk: each step writes its result beside the output under temporary names
    (the next step reads it from there), and only the last step's, verified against the
    original from the files, is renamed into place."""
    start = time.perf_counter()
    entry: dict = {"model": str(job.source), "output": str(job.output), "status": "error", "error": None,
                   "steps_done": 0, "steps": [], "parameters": None, "verification": None, "seconds": None,
                   "exact": None, "weights": None, "changed": None, "warnings": []}
    held: list[sink.ToFile] = []  # the outputs not yet read by the next step, or not yet committed
    try:
        original = load_model(job.source, mapped=True)
        current, before, after = original, None, None
        touched: set[str] = set()
        for number, step in enumerate(plan.steps, start=1):
            last = number == len(plan.steps)
            # the final output has external data as the original had (or when too large for one file)
            out = sink.ToFile(job.output, "auto" if last else "always",
                              replace(current, external_data=original.external_data) if last else current)
            held.append(out.__enter__())
            result = _run_step(plan, step, number, current, out, entry)
            while len(held) > 1:  # the previous step's files: read now
                held.pop(0).__exit__(None, None, None)
            if number == 1:
                entry["warnings"] = result.warnings
            touched.update(c["name"] for c in result.changed)
            model = result.model
            before = result.parameters_before if before is None else before
            after = result.parameters_after
            entry["steps_done"] = number
            if not last:
                current = load_model(out.path, mapped=True)
        entry["parameters"] = {"before": before, "after": after}
        report = out.compare(original, model, plan.verify_options)
        entry["verification"] = report.to_json()
        exact = all(step.noise == 0 or step.split == "fresh" for step in plan.steps)
        entry["exact"] = exact
        if not report.passed and exact:
            entry["status"] = "mismatch"
            entry["error"] = "outputs differ from the original's; nothing written"
        else:
            if job.weights:
                out.save_weights(model, job.weights)
                entry["weights"] = str(job.weights)
                entry["changed"] = H.changed_initializers(original.model, model, sorted(touched), out.path)
            out.commit()
            entry["status"] = "ok"
    except Net2NetError as exc:
        entry["error"] = str(exc)
        if isinstance(exc, VerificationError):  # the rewritten model failed in onnxruntime
            entry["status"] = "mismatch"
    except MemoryError:
        entry["error"] = "out of memory"
    except Exception as exc:  # a bug: reported for this model, the others go on
        entry["error"] = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        for out in held:  # temporary files not committed are removed
            out.__exit__(None, None, None)
    entry["seconds"] = round(time.perf_counter() - start, 3)
    return entry


def _run_step(plan: Plan, step, number: int, current: LoadedModel, out: sink.ToFile, entry: dict):
    """One step, written to `out` (not verified: the whole plan is, once)."""
    seed = plan.seed if step.seed is None else step.seed
    if step.kind == "widen":
        result = api.widen_model(current, step.targets, seed=seed, noise=step.noise, verify=False,
                                 widen_all=step.widen_all, optional=step.optional, split=step.split,
                                 split_scale=step.split_scale, output=out)
        entry["steps"].append({"step": number, "kind": "widen", "widened": result.widened})
    elif step.kind == "copy_block":
        result = api.deepen_model(current, copy_block=step.targets, repeat=step.repeat, verify=False,
                                  optional=step.optional, output=out)
        entry["steps"].append({"step": number, "kind": "copy_block", "inserted": result.inserted,
                               "skipped": result.skipped})
    else:
        result = api.deepen_model(current, step.targets, kernel=step.kernel, residual=step.residual,
                                  batch_norm=step.bn, seed=seed, verify=False, optional=step.optional,
                                  name=step.name, output=out)
        entry["steps"].append({"step": number, "kind": "deepen", "inserted": result.inserted})
    return result


# Worker-process state: Ctrl-C or SIGTERM interrupts a running job (its atomic write unwinds and
# removes the temporary files), while an idle worker just stops taking jobs: no tracebacks, no
# new files. A worker whose parent died (killed outright) cleans up the same way and exits.
_WORKER = {"busy": False, "stopping": False, "parent": 0}
_PR_SET_PDEATHSIG = 1


def _on_signal(signum, frame) -> None:
    _WORKER["stopping"] = True
    if _WORKER["busy"]:
        raise Interrupted(signum)
    if os.getppid() != _WORKER["parent"]:
        os._exit(128 + signum)  # orphaned and idle: nothing to clean, nobody to report to


def _init_worker(threads: int, parent: int) -> None:
    set_threads(threads)
    _WORKER["parent"] = parent
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:  # Linux: SIGTERM when the parent dies, even by SIGKILL
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(128 + signal.SIGTERM)


def _worker_job(plan: Plan, job: Job) -> dict:
    if _WORKER["stopping"]:
        return _failed(job, "interrupted before it started")
    _WORKER["busy"] = True
    try:
        return run_job(plan, job)
    except KeyboardInterrupt as exc:
        discard_uncommitted()  # whatever the signal caught between creating and guarding
        if os.getppid() != _WORKER["parent"]:
            os._exit(128 + getattr(exc, "signum", signal.SIGINT))  # cleaned up; nobody to report to
        raise
    finally:
        _WORKER["busy"] = False


def _failed(job: Job, error: str) -> dict:
    return {"model": str(job.source), "output": str(job.output), "status": "error", "error": error,
            "steps_done": 0, "steps": [], "parameters": None, "verification": None, "seconds": None,
            "exact": None, "weights": None, "changed": None, "warnings": []}


def run(plan: Plan, jobs: list[Job], workers: int, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run every job; at most `workers` models are loaded at once. Results keep input order.

    On Ctrl-C or SIGTERM (Interrupted) the workers are interrupted too (their partial files
    are removed as the interrupt unwinds the atomic writes) and the exception propagates.
    """
    results: list[dict | None] = [None] * len(jobs)
    if workers <= 1:
        for index, job in enumerate(jobs):
            results[index] = run_job(plan, job)
            if progress:
                progress(results[index])
        return results  # type: ignore[return-value]

    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    written = [p for job in jobs for p in (job.output, job.weights) if p is not None]
    earlier = set(leftover_temps(written))
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker,
                               initargs=(threads, os.getpid()))
    try:
        pending: dict[Future, int] = {pool.submit(_worker_job, plan, job): i for i, job in enumerate(jobs)}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                try:
                    results[index] = future.result()
                except Exception as exc:  # the worker process itself died
                    results[index] = _failed(jobs[index], f"worker failed: {type(exc).__name__}: {exc}")
                if progress:
                    progress(results[index])
    except KeyboardInterrupt:
        for process in list(getattr(pool, "_processes", {}).values()):
            try:  # SIGTERM: a worker still starting (no handler yet) ends without a traceback
                os.kill(process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        pool.shutdown(wait=True, cancel_futures=True)
        for leftover in set(leftover_temps(written)) - earlier:
            leftover.unlink(missing_ok=True)  # of workers that could not unwind; never an earlier run's
        raise
    pool.shutdown(wait=True)
    return results  # type: ignore[return-value]


def exit_code(results: list[dict]) -> int:
    statuses = {r["status"] for r in results}
    return 2 if "error" in statuses else 1 if "mismatch" in statuses else 0
