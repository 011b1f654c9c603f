"""The text tables printed by ``python -m benchmarks`` (and quoted in docs/performance.md)."""

from __future__ import annotations

from typing import Any

DB_LABELS = {
    "sqlite": "SQLite file (WAL)",
    "sqlite-delete": "SQLite file (rollback journal)",
    "postgres": "PostgreSQL",
}


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(headers))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True)), line]
    for row in cells[1:]:
        out.append("  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                             for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 100 else f"{value:.0f}"
    return str(value)


def _target(ok: bool | None) -> str:
    return "" if ok is None else ("holds" if ok else "MISSED")


def overhead_table(results: dict[str, Any]) -> str:
    rows = []
    for db, result in results.items():
        if "error" in result or "skipped" in result:
            rows.append([DB_LABELS.get(db, db), "-", result.get("skipped") or result["error"],
                         "", "", "", "", "", ""])
            continue
        for row in result["rows"]:
            over = row["overhead"]
            limit = 1.0 if row["history"] <= 10 else 4.0 if row["history"] >= 1000 else None
            ok = None if limit is None or not db.startswith("sqlite") \
                else over["median_ms"] <= limit
            rows.append([DB_LABELS.get(db, db), row["history"], row["turn"]["median_ms"],
                         over["median_ms"], over["p95_ms"],
                         row.get("overhead_cpu", {}).get("median_ms", "-"),
                         "/".join(map(str, row["queries_per_turn"])), over["n"],
                         _target(ok)])
    return _table(["database", "history", "turn p50", "overhead p50", "overhead p95",
                   "CPU p50", "queries/turn", "turns", "target"], rows)


def sdk_table(results: dict[str, Any]) -> str:
    rows = []
    for db, result in results.items():
        if "error" in result or "skipped" in result:
            rows.append([DB_LABELS.get(db, db), "-", result.get("skipped") or result["error"],
                         "", "", "", "", ""])
            continue
        for row in result["rows"]:
            rows.append([DB_LABELS.get(db, db), row["history"], row["turn"]["median_ms"],
                         row["client"]["median_ms"], row["bare_sdk"]["median_ms"],
                         row["overhead"]["median_ms"], row["overhead"]["p95_ms"],
                         f"{100 * row['overhead']['median_ms'] / row['turn']['median_ms']:.0f}%"])
    return _table(["database", "history", "turn p50", "in SDK p50", "bare SDK p50",
                   "library p50", "library p95", "library share"], rows)


def streaming_table(results: dict[str, Any]) -> str:
    rows = []
    for layer, result in results.items():
        if "rows" not in result:
            rows.append([layer, "-", result.get("pending") or result.get("skipped")
                         or result.get("error"), "", "", ""])
            continue
        for row in result["rows"]:
            p50_limit = 2.0 if layer == "memory" else 5.0
            ok = row["latency"]["median_ms"] <= p50_limit and (
                layer != "memory" or row["latency"]["p99_ms"] <= 10.0)
            rows.append([layer, row["viewers"], row["latency"]["median_ms"],
                         row["latency"]["p99_ms"], row["latency"]["n"], _target(ok)])
    return _table(["channel layer", "viewers", "delta->WS p50", "p99", "deliveries", "target"],
                  rows)


def scale_table(results: dict[str, Any]) -> str:
    lines = []
    idle = results.get("idle_memory", {})
    if "rows" in idle:
        for row in idle["rows"]:
            lines.append(f"idle conversations held by one ASGI process: {row['conversations']}, "
                         f"{row['kib_per_conversation']:.1f} KiB each "
                         f"(RSS {row['rss_before_mib']:.1f} -> {row['rss_after_mib']:.1f} MiB)")
    else:
        lines.append("idle conversations per ASGI process: "
                     + str(idle.get("pending") or idle.get("skipped") or idle.get("error")))
    throughput = results.get("throughput", {})
    if "rows" in throughput:
        rows = [[row["processes"], row["conversations"], row["turns"], row["seconds"],
                 row["turns_per_second"], row["turn_latency"]["median_ms"],
                 row["turn_latency"]["p95_ms"]] for row in throughput["rows"]]
        lines.append(_table(["ASGI processes", "conversations", "turns", "seconds", "turns/s",
                             "turn p50", "turn p95"], rows))
    else:
        lines.append("turns per second with 1, 2, 4 ASGI processes: "
                     + str(throughput.get("pending") or throughput.get("skipped")
                           or throughput.get("error")))
    return "\n".join(lines)


def targets(res: dict[str, Any]) -> list[str]:
    """One line per target of the issue: the measured value and whether it holds."""
    lines = []
    for db, result in res.get("overhead", {}).items():
        rows = {row["history"]: row for row in result.get("rows", [])}
        label = DB_LABELS.get(db, db)
        if db.startswith("sqlite"):
            for size, limit in ((10, 1.0), (1000, 4.0)):
                if size in rows:
                    value = rows[size]["overhead"]["median_ms"]
                    lines.append(f"overhead p50 <= {limit} ms at {size} messages, {label}: "
                                 f"{value:.2f} ms -> {_target(value <= limit)}")
        counts = sorted({n for row in rows.values() for n in row["queries_per_turn"]})
        if counts:
            ok = max(counts) <= 8 and len(counts) == 1
            lines.append(f"queries per turn <= 8 and the same at every history size, {label}: "
                         f"{'/'.join(map(str, counts))} -> {_target(ok)}")
    for layer, result in res.get("streaming", {}).items():
        for row in result.get("rows", []):
            lat, viewers = row["latency"], row["viewers"]
            if layer == "memory":
                ok = lat["median_ms"] <= 2.0 and lat["p99_ms"] <= 10.0
                lines.append(f"delta -> WebSocket <= 2 ms p50 / 10 ms p99, in memory, {viewers} "
                             f"viewer(s): {lat['median_ms']:.2f} / {lat['p99_ms']:.2f} ms -> "
                             f"{_target(ok)}")
            else:
                lines.append(f"delta -> WebSocket <= 5 ms p50, Redis, {viewers} viewer(s): "
                             f"{lat['median_ms']:.2f} ms -> {_target(lat['median_ms'] <= 5.0)}")
    return lines


def render(data: dict[str, Any]) -> str:
    """Every table of one run, as plain text."""
    meta = data["meta"]
    parts = [(f"django-agent-session benchmarks  {meta['date']}  commit {meta['commit']}  "
              f"{meta['cpus']} CPUs  load {meta['load_before']} -> {meta['load_after']}"),
             f"command: {meta['command']}"]
    res = data["results"]
    sections = [
        ("overhead", ("Per-turn library overhead of continue_session, scripted client, ms "
                     "(overhead = turn minus time inside the client)"), overhead_table),
        ("sdk", ("Through the real anthropic SDK against the loopback Messages API, ms "
                "(library = turn minus time inside the SDK call)"), sdk_table),
        ("streaming", ("Streaming: loopback server writes a delta -> WebSocket client receives "
                      "it, ms"), streaming_table),
        ("scale", "Scale (Redis channel layer, PostgreSQL, model delay 50 ms)", scale_table),
    ]
    for key, title, table in sections:
        if key in res:
            parts += ["", title, table(res[key])]
    parts += ["", "Targets (reported, never asserted)", *targets(res)]
    return "\n".join(parts)
