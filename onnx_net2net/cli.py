"""The command line: a thin shell over the library API, with exit codes 0 / 1 (mismatch) / 2 (input)."""

from __future__ import annotations

import contextlib
import sys

import click

import time
from pathlib import Path

from . import api, batch, checks, signals
from . import handoff as H
from .plan import load_plan
from .splitting import CLI_MODES, DEFAULT_MODE
from .errors import Net2NetError, VerificationError
from .io import check_output_path, discard_uncommitted, leftover_temps, load_model, save_text
from .report import format_batch, format_deepened, format_groups, format_report, format_widened, handoff_json, json_text
from .verification import DEFAULT_DIM, DEFAULT_INT_RANGE, Report, compare, load_inputs


class _Group(click.Group):
    """Catches user errors in one place: one line on stderr, no traceback unless -v."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        """click's own usage errors (unknown option, bad value, missing argument) as one line, exit 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            click.echo(f"error: {_usage_line(exc)}", err=True)
            sys.exit(2)
        except click.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            with signals.raising():  # SIGTERM unwinds like Ctrl-C: temporary files are removed
                return super().invoke(ctx)
        except KeyboardInterrupt as exc:
            discard_uncommitted()  # whatever a signal caught between creating and guarding
            click.echo(f"interrupted by {signals.name(exc)}: stopped, no partial file left", err=True)
            ctx.exit(signals.exit_code(exc))
        except Net2NetError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            if isinstance(exc, VerificationError) and exc.report is not None:
                click.echo(format_report(exc.report), err=True)
            ctx.exit(exc.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit):
            raise
        except Exception as exc:  # a bug, not the user's fault: still one line unless -v
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True)
            ctx.exit(2)


def _usage_line(exc: click.ClickException) -> str:
    """'--workers: 0 is not in the range x>=1' rather than click's usage block."""
    if isinstance(exc, click.BadParameter) and not isinstance(exc, click.MissingParameter):
        hint = exc.param_hint or (exc.param.get_error_hint(exc.ctx) if exc.param else None)
        if hint:
            hint = (hint if isinstance(hint, str) else " / ".join(hint)).replace("'", "")
            return f"{hint}: {exc.message}"
    return " ".join(exc.format_message().split())


def _checked(problem):
    """A click callback refusing what a `checks` predicate refuses (NaN, negative seeds, ...)."""
    def callback(ctx, param, value):
        if value is not None and problem(value):
            raise click.BadParameter(problem(value), ctx, param)
        return value
    return callback


def _result_json(model: str, out, result, written: bool, weights=None) -> dict:
    """The document widen and deepen print with --json, whether or not verification passed:
    what changed, the verification (or a --noise deviation) and what training needs back."""
    changes = {"widened": result.widened, "blocked": result.blocked, "skipped": result.skipped,
               "untied": result.untied} if isinstance(result, api.WidenResult) \
        else {"inserted": result.inserted, "skipped": result.skipped}
    return {"schema": 1, "model": model, "output": str(out), "written": written, **changes,
            "parameters": {"before": result.parameters_before, "after": result.parameters_after},
            **handoff_json(result, weights if written else None)}


@contextlib.contextmanager
def _json_on_mismatch(as_json: bool, model: str, out):
    """With --json, a failed verification still prints its document (written: false) on stdout."""
    try:
        yield
    except VerificationError as exc:
        if as_json and exc.result is not None:
            _emit_json(_result_json(model, out, exc.result, written=False))
        raise


def _emit_json(document: dict) -> None:
    click.echo(json_text(document))


def _parse_dims(values: tuple[str, ...]) -> dict[str, int]:
    dims = {}
    for value in values:
        name, sep, number = (part.strip() for part in value.partition("="))
        try:
            size = int(number)
        except ValueError:
            size = None
        if not sep or not name or size is None:
            raise click.BadParameter(f"'{value}' is not NAME=VALUE with an integer VALUE", param_hint="--dim")
        if checks.dim_problem(size):
            raise click.BadParameter(f"{name}={checks.dim_problem(size)}", param_hint="--dim")
        dims[name] = size
    return dims


def _parse_range(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        low, high = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"'{value}' is not LOW,HIGH", param_hint="--val-range") from None
    if high <= low:
        raise click.BadParameter("HIGH must be larger than LOW", param_hint="--val-range")
    return low, high


def verify_options(func):
    """Options shared by every command that runs both models."""
    options = [
        click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
                     help=f"Size of a dynamic input dim (default {DEFAULT_DIM})."),
        click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False),
                     help="Run on inputs from an .npz file instead of random ones."),
        click.option("--val-range", metavar="LOW,HIGH",
                     help=f"Range of random integer inputs (default {DEFAULT_INT_RANGE[0]},{DEFAULT_INT_RANGE[1]})."),
        click.option("--atol", type=float, callback=_checked(checks.amount_problem),
                     help="Absolute tolerance (default by dtype: float32 1e-5)."),
        click.option("--rtol", type=float, callback=_checked(checks.amount_problem),
                     help="Relative tolerance (default by dtype: float32 1e-5), scaled by each output's max |value|."),
        click.option("--strict", is_flag=True, help="Apply atol + rtol*|e| to every element (Polygraphy's rule)."),
        click.option("--input-seed", type=int, default=0, show_default=True, callback=_checked(checks.seed_problem),
                     help="Seed of the random inputs."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _warn_leftovers(outputs: list[Path]) -> None:
    found = leftover_temps(outputs)
    if found:
        click.echo(f"warning: {len(found)} temporary file{'s' * (len(found) > 1)} of an interrupted earlier run "
                   f"({', '.join(str(p) for p in found)}); not removed, delete when no other run writes there",
                   err=True)


def _load_for_output(model: str, output: str, force: bool, inputs_file: str | None):
    """Output checks first (cheap, before any heavy work), then the model, then its data files
    (weights stay on disk, read one at a time)."""
    out = check_output_path(output, [Path(model), Path(inputs_file) if inputs_file else None], force)
    _warn_leftovers([out])
    loaded = load_model(model, mapped=True)
    check_output_path(output, loaded.data_files, force)
    return loaded, out


_EXTERNAL_DATA = click.option("--external-data", type=click.Choice(["auto", "always", "never"]), default="auto",
                              show_default=True, help="Weights in OUTPUT.data beside the model: auto when the "
                              "input had external data or they exceed 2 GiB.")


def _verify_kwargs(dims, inputs_file, val_range, atol, rtol, strict, input_seed) -> dict:
    return {"feeds": load_inputs(inputs_file) if inputs_file else None, "dims": _parse_dims(dims),
            "int_range": _parse_range(val_range), "atol": atol, "rtol": rtol, "strict": strict, "seed": input_seed}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="onnx-net2net")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """Grow trained ONNX networks without changing what they compute (Net2Net)."""
    ctx.obj = {"verbose": verbose}


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def inspect(model: str, as_json: bool) -> None:
    """List the width groups of MODEL (width, members, widenable or why not), its deepen
    points and its residual blocks (copyable or why not)."""
    result = api.inspect(model)
    if as_json:
        _emit_json(result.to_json())
    else:
        click.echo(format_groups(result), err=True)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("targets", nargs=-1, metavar="TARGET=WIDTH...")
@click.option("--all", "widen_all", metavar="xF", help="Also widen every other widenable group by factor F.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the wider model.")
@click.option("--seed", type=int, default=0, show_default=True, callback=_checked(checks.seed_problem),
              help="Seed of the random unit mapping.")
@click.option("--split", type=click.Choice(CLI_MODES), default=DEFAULT_MODE, show_default=True,
              help="How copies share their unit's outgoing weights: equal (w/k: copies stay copies), "
                   "random (random positive shares), antithetic (w/k ± noise cancelling over the copies) or "
                   "fresh (copies get 0 and noisy incoming weights; the default, it trains best). All exact; "
                   "all but equal let copies diverge in training.")
@click.option("--split-scale", type=float, help="Spread of random shares (log scale), antithetic noise or fresh "
              "copies' incoming noise (relative to the weights' std); default by mode.")
@click.option("--noise", type=float, default=0.0, show_default=True, callback=_checked(checks.amount_problem),
              help="Std of noise added to the copied units' incoming weights, relative to the weights' std "
                   "(the paper's symmetry breaking). NOT exact, except with --split fresh where copies feed "
                   "nothing and nothing normalizes over them: the deviation is "
                   "reported and the model written.")
@click.option("--weights-out", type=click.Path(dir_okay=False), help="Also write the grown parameters as a "
              "safetensors file keyed by initializer name.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT (and the weights file) if it exists.")
@_EXTERNAL_DATA
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@verify_options
def widen(model, targets, widen_all, output, seed, split, split_scale, noise, weights_out, no_verify, force,
          external_data, as_json, **verify) -> None:
    """Widen layers of MODEL: TARGET is a node, weight or module name, a group id from
    inspect, or a glob pattern ('layer*.conv2'); WIDTH is an absolute size (96) or a factor
    (x1.5). Nothing is written unless onnxruntime confirms the outputs are unchanged."""
    if not targets and widen_all is None:
        raise Net2NetError("nothing to widen: give TARGET=WIDTH arguments or --all xF")
    requests = []  # pairs, so a target given twice with different widths is refused, not overwritten
    for item in targets:
        name, sep, width = item.rpartition("=")
        if not sep or not name or not width:
            raise Net2NetError(f"'{item}' is not TARGET=WIDTH (e.g. conv2=96 or fc1=x1.5)")
        requests.append((name, width))
    loaded, out = _load_for_output(model, output, force, verify["inputs_file"])
    weights = H.check_weights_path(weights_out, [Path(model), *loaded.data_files], force, out) if weights_out else None
    with _json_on_mismatch(as_json, model, out):
        result = api.widen_model(loaded, requests, seed=seed, noise=noise, verify=not no_verify,
                                 verify_options=_verify_kwargs(**verify), widen_all=widen_all, split=split,
                                 split_scale=split_scale, output=out, external_data=external_data,
                                 weights_out=weights)
    _warn(result)
    if as_json:
        _emit_json(_result_json(model, out, result, written=True, weights=weights))
    else:
        click.echo(format_widened(result, str(out), weights), err=True)


def _warn(result) -> None:
    """Round-trip warnings (the model, and its weights when asked for, are written already)."""
    for line in result.warnings:
        click.echo(f"warning: {line}", err=True)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.argument("targets", nargs=-1, metavar="TARGET...")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Where to write the deeper model.")
@click.option("--copy-block", "copy_block", multiple=True, metavar="TARGET",
              help="Copy the residual block containing TARGET (node, weight or module name, glob, or block id "
                   "from inspect) right after it, its last parameters zeroed so the copy starts as the identity.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Copies per --copy-block block, chained.")
@click.option("--kernel", type=int, help="Odd kernel size of inserted convs (default: the target's when odd, else 3).")
@click.option("--residual", is_flag=True,
              help="Insert x + W2 f(W1 x) with W2 = 0 (exact for any activation, trainable from step one).")
@click.option("--no-bn", is_flag=True, help="Do not give the new layer an identity BatchNorm when the target has one.")
@click.option("--seed", type=int, default=0, show_default=True, callback=_checked(checks.seed_problem),
              help="Seed of the residual block's W1.")
@click.option("--name", "name_template", metavar="TEMPLATE", help="Name of each new block: {target} (the layer's "
              "module name), {i} (first free number), {n} (position in this call); default '{target}.n2n_deep{i}'.")
@click.option("--weights-out", type=click.Path(dir_okay=False), help="Also write the grown parameters as a "
              "safetensors file keyed by initializer name.")
@click.option("--no-verify", is_flag=True, help="Skip the onnxruntime comparison.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT (and the weights file) if it exists.")
@_EXTERNAL_DATA
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@verify_options
def deepen(model, targets, output, copy_block, repeat, kernel, residual, no_bn, seed, name_template, weights_out,
           no_verify, force, external_data, as_json, **verify) -> None:
    """Insert an identity-initialized layer after each TARGET's tail (bias, BatchNorm,
    activation); TARGET is a node, weight or module name, or a glob pattern. Exact when the
    activation is idempotent (ReLU, Clip); --residual is exact for any activation.
    --copy-block stacks copies of whole residual blocks (x + f(x)) instead or as well."""
    if not targets and not copy_block:
        raise Net2NetError("nothing to deepen: give TARGET layers or --copy-block TARGET")
    if repeat != 1 and not copy_block:
        raise Net2NetError("--repeat applies to --copy-block; give the blocks to copy")
    loaded, out = _load_for_output(model, output, force, verify["inputs_file"])
    weights = H.check_weights_path(weights_out, [Path(model), *loaded.data_files], force, out) if weights_out else None
    with _json_on_mismatch(as_json, model, out):
        result = api.deepen_model(loaded, list(targets), kernel=kernel, residual=residual,
                                  batch_norm=not no_bn, seed=seed, verify=not no_verify,
                                  verify_options=_verify_kwargs(**verify), copy_block=list(copy_block),
                                  repeat=repeat, name=name_template, output=out, external_data=external_data,
                                  weights_out=weights)
    _warn(result)
    if as_json:
        _emit_json(_result_json(model, out, result, written=True, weights=weights))
    else:
        click.echo(format_deepened(result, str(out), weights), err=True)


@main.command()
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("models", nargs=-1, required=True, metavar="MODELS...")
@click.option("-o", "--output", "outdir", required=True, type=click.Path(file_okay=False),
              help="Directory for the grown models (named as their inputs).")
@click.option("--workers", type=click.IntRange(min=1), help="Models processed in parallel "
              f"(default: number of CPUs, at most {batch.MAX_DEFAULT_WORKERS}).")
@click.option("--report", "report_file", type=click.Path(dir_okay=False), help="Write a JSON report here.")
@click.option("--weights-out", is_flag=True, help="Also write each grown model's parameters as "
              "OUTDIR/<model name>.safetensors (as the plan's weights_out = true).")
@click.option("--force", is_flag=True, help="Overwrite existing outputs.")
def apply(plan_file, models, outdir, workers, report_file, weights_out, force) -> None:
    """Apply PLAN (TOML or JSON widen/deepen steps) to MODELS (files, directories or globs).

    Exit code 0 when every model succeeded, 1 when any failed verification, 2 when any failed
    for another reason. A failed model leaves no file behind."""
    plan = load_plan(plan_file)
    jobs = batch.plan_jobs(batch.collect_models(list(models)), outdir, force, weights_out or plan.weights_out)
    report_path = batch.check_report(report_file, jobs, plan_file, force) if report_file else None
    _warn_leftovers([job.output for job in jobs] + [job.weights for job in jobs if job.weights]
                    + ([report_path] if report_path else []))
    workers = workers or batch.default_workers(len(jobs))
    plural = lambda n, word: f"{n} {word}{'' if n == 1 else 's'}"  # noqa: E731
    click.echo(f"applying {plan_file} ({plural(len(plan.steps), 'step')}) to {plural(len(jobs), 'model')} "
               f"with {plural(workers, 'worker')}", err=True)
    start = time.perf_counter()
    interactive = sys.stderr.isatty()
    done: list[dict] = []
    bar = click.progressbar(length=len(jobs), label="growing", file=sys.stderr) if interactive else None

    def progress(entry: dict) -> None:
        done.append(entry)
        if bar is not None:
            bar.update(1)
        else:
            click.echo(f"[{len(done)}/{len(jobs)}] {entry['model']}: {entry['status']} ({entry['seconds'] or 0:.1f}s)"
                       + (f": {entry['error']}" if entry["error"] else ""), err=True)

    try:
        if bar is not None:
            bar.__enter__()
        results = batch.run(plan, jobs, workers, progress)
    except KeyboardInterrupt as exc:
        newline = "\n" if bar is not None else ""  # end the progress bar's line
        click.echo(f"{newline}interrupted: {len(done)} of {len(jobs)} models finished; unfinished ones wrote nothing",
                   err=True)
        sys.exit(signals.exit_code(exc))
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)
    wall = time.perf_counter() - start
    click.echo(format_batch(results, len(plan.steps)), err=True)
    if report_file:
        document = {"schema": 1, "plan_file": str(plan_file), "plan": plan.to_json(), "workers": workers,
                    "seconds": round(wall, 3), "models": results,
                    "summary": {s: sum(r["status"] == s for r in results) for s in ("ok", "mismatch", "error")}}
        save_text(report_path, json_text(document))
    sys.exit(batch.exit_code(results))


@main.command()
@click.argument("original", type=click.Path(dir_okay=False))
@click.argument("rewritten", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@verify_options
def verify(original, rewritten, as_json, **options) -> None:
    """Run ORIGINAL and REWRITTEN in onnxruntime on the same inputs; exit 1 on mismatch."""
    report: Report = compare(load_model(original).model, load_model(rewritten).model, **_verify_kwargs(**options))
    if as_json:
        _emit_json(report.to_json())
    else:
        click.echo(format_report(report), err=True)
    if not report.passed:
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
