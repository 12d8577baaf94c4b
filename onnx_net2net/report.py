"""Human-readable text for the CLI: group tables and verification summaries."""

from __future__ import annotations

import json
import math

from .verification import Report


def json_text(document: dict) -> str:
    """Strict JSON: non-finite floats (an infinite error, a NaN) become null, since Infinity and
    NaN are not JSON and break other parsers; allow_nan=False catches any that slip through."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(document), indent=2, allow_nan=False)


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _short(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit})" if len(names) > limit else "")


def format_groups(inspection) -> str:
    groups = inspection.groups
    rows = [[g["id"], g["kind"], g["width"] if g["unit_size"] == 1 else f"{g['units']}x{g['unit_size']}",
             ("whole x" if g["family"] == "uniform" else "yes") if g["widenable"] else "no",
             _short(g["producers"]), len(g["consumers"]), g["reason"] or ""] for g in groups]
    widenable = sum(g["widenable"] for g in groups)
    head = (f"{inspection.model}: {inspection.parameters:,} parameters, {len(groups)} width groups, "
            f"{widenable} widenable")
    text = head + "\n" + _table(rows, ["group", "kind", "width", "widen", "producers", "consumers", "blocked by"])
    if any(g["family"] == "uniform" and g["widenable"] for g in groups):
        text += "\n'whole x': normalized over its units, so it widens by integer factors only (x2, x3)"
    tied = {tuple(sorted([g["id"], *g["tied"]], key=lambda i: int(i[1:]))): None
            for g in groups if g["widenable"] and g.get("tied")}
    if tied:
        text += ("\nread together by grouped convolutions, shuffles or norms, so widened by one factor together: "
                 + "; ".join(", ".join(ids) for ids in tied))
    if inspection.deepen:
        points = [[p["target"], p["op"], p["activation"] or "-", "yes" if p["exact"] else "residual only",
                   p["reason"] or ""] for p in inspection.deepen]
        exact = sum(p["exact"] for p in inspection.deepen)
        text += (f"\n\ndeepen points: {len(points)}, {exact} exact with an identity layer "
                 f"(all with --residual)\n" + _table(points, ["target", "op", "activation", "deepen", "why not"]))
    blocks = getattr(inspection, "blocks", [])
    if blocks:
        rows = [[b["id"], b["add"], b["module"] or "-", b["nodes"], f"{b['parameters']:,}",
                 "identity" if b["skip"] == "identity" else "projection", "yes" if b["copyable"] else "no",
                 b["reason"] or "; ".join(b["notes"])] for b in blocks]
        text += (f"\n\nresidual blocks: {len(blocks)}, {sum(b['copyable'] for b in blocks)} copyable "
                 f"(deepen --copy-block)\n"
                 + _table(rows, ["block", "add", "module", "nodes", "params", "skip", "copy", "why not / notes"]))
    return text


def format_report(report: Report) -> str:
    rows = [[c.name, c.dtype, "x".join(map(str, c.shape)) or "scalar", f"{c.max_abs:.3g}", f"{c.max_rel:.3g}",
             f"{c.atol:g}/{c.rtol:g}", "ok" if c.passed else f"MISMATCH{': ' + c.problem if c.problem else ''}"]
            for c in report.outputs]
    text = _table(rows, ["output", "dtype", "shape", "max abs", "max rel", "atol/rtol", "result"])
    rule = ("|a-e| <= atol + rtol*|e| for every element (strict)" if report.strict
            else "max|a-e| <= atol + rtol*max|e| per output (--strict: element-wise)")
    notes = "".join(f"\nnote: {n}" for n in [*report.notes, f"passes when {rule}"])
    verdict = "verified: outputs match" if report.passed else "verification FAILED"
    return f"{text}{notes}\n{verdict}"


def handoff_json(result, weights) -> dict:
    """The verification (or, with --noise, the deviation) and what a framework needs to take
    the grown weights: the parameters changed, warnings and the weights file."""
    report = result.report
    deviation = None
    if not result.exact and report is not None:  # measured, not enforced: how far from the original
        deviation = {"max_abs": max((c.max_abs for c in report.outputs), default=0.0),
                     "max_rel": max((c.max_rel for c in report.outputs), default=0.0), "enforced": False}
    return {"exact": result.exact, "deviation": deviation, "verification": report.to_json() if report else None,
            "changed": result.changed, "warnings": result.warnings, "weights": str(weights) if weights else None}


def _verdict(result) -> str:
    if result.report is None:
        return "not verified (--no-verify)"
    if result.exact:
        return format_report(result.report)
    worst_abs = max((c.max_abs for c in result.report.outputs), default=0.0)
    worst_rel = max((c.max_rel for c in result.report.outputs), default=0.0)
    return (f"NOT exact (--noise): the outputs differ from the original's by up to {worst_abs:.3g} "
            f"(relative {worst_rel:.3g}); written as asked")


def _written(output: str, weights, result) -> list[str]:
    lines = [f"wrote {output}"]
    if weights:
        lines.append(f"wrote {weights} ({len(result.changed)} changed parameters among the weights)")
    return lines


def format_widened(result, output: str, weights=None) -> str:
    lines = []
    for w in result.widened:
        split = w.get("split") or {}
        how = f"; split {split['mode']}" + (f" (scale {split['scale']:g})" if split.get("scale") else "") if split else ""
        lines.append(f"{w['group']}: {w['old']} -> {w['new']} units ({', '.join(w['targets'])}){how}")
    if result.blocked and any("all" in w["targets"] for w in result.widened):
        lines.append(f"not widenable: {', '.join(b['group'] for b in result.blocked)} (see inspect for reasons)")
    by_reason: dict[str, list[str]] = {}
    for kept in getattr(result, "skipped", []):
        by_reason.setdefault(kept["reason"], []).append(kept["group"])
    lines += [f"kept at their width: {', '.join(ids)}: {reason}" for reason, ids in by_reason.items()]
    lines.append(f"parameters: {result.parameters_before:,} -> {result.parameters_after:,}")
    lines.append(_verdict(result))
    return "\n".join(lines + _written(output, weights, result))


def format_deepened(result, output: str, weights=None) -> str:
    lines = []
    for i in result.inserted:
        if i.get("op") == "block":
            lines.append(f"{i['target']}: copied block {i['copy_of']} ({i['source']}) as {i['prefix']}: "
                         f"{len(i['nodes'])} nodes, zeroed {', '.join(i['zeroed'])}")
        else:
            lines.append(f"{i['target']}: inserted {i.get('name') or ', '.join(i['layers'])}: "
                         f"{i['block']['torch'] if i.get('block') else ', '.join(i['layers'])}")
    lines += [f"not copied: block {s['block']} ({s['add']}): {s['reason']}" for s in getattr(result, "skipped", [])]
    lines.append(f"parameters: {result.parameters_before:,} -> {result.parameters_after:,}")
    lines.append(_verdict(result))
    return "\n".join(lines + _written(output, weights, result))


def format_batch(results: list[dict], steps: int) -> str:
    rows = []
    for r in results:
        params = r["parameters"] or {}
        checks = (r["verification"] or {}).get("outputs", [])
        max_abs = max((c["max_abs"] for c in checks), default=None)
        max_rel = max((c["max_rel"] for c in checks), default=None)
        status = r["status"] if not r["error"] else f"{r['status']}: {r['error']}"
        rows.append([r["model"], f"{r['steps_done']}/{steps}",
                     f"{params['before']:,}" if params else "-", f"{params['after']:,}" if params else "-",
                     "-" if max_abs is None else f"{max_abs:.3g}", "-" if max_rel is None else f"{max_rel:.3g}",
                     f"{r['seconds']:.1f}" if r["seconds"] is not None else "-",
                     status if len(status) <= 100 else status[:97] + "..."])
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "mismatch", "error")}
    return (_table(rows, ["model", "steps", "params before", "params after", "max abs", "max rel", "seconds",
                          "status"])
            + f"\n{counts['ok']} ok, {counts['mismatch']} failed verification, {counts['error']} failed")
