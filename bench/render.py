#!/usr/bin/env python3
"""render.py — docs/benchmarks.md and bench/results.svg from bench/results.json.

    render.py [--results bench/results.json] [--meta bench/results.meta.json]
              [--template bench/benchmarks.md.in] [--doc docs/benchmarks.md]
              [--svg bench/results.svg]

The template's placeholders: {{META}} (how and where the run was made),
{{TARGETS}} (the issue's targets against the measured ratios), {{TABLES}}
(every cell with its ratios), {{CHART}} (the SVG's link). Standard library only.
"""

import argparse
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Which raw pattern a libpsrpc/Go cell is held against (same in-flight and payload).
RAW_OF = {"single": "pingpong4", "affinity": "pingpong4", "multi": "pingpong2",
          "stream": "pingpong2", "sub": "fanout"}
SCEN_ORDER = ["single", "affinity", "multi", "sub", "stream"]
SCEN_LABEL = {"single": "single (queue+claim)", "affinity": "affinity, 3 servers",
              "multi": "multi, 3 servers", "sub": "subscription → 3 clients",
              "stream": "stream (acked msgs)", "pingpong2": "raw 2-hop ping-pong",
              "pingpong4": "raw 4-hop ping-pong", "fanout": "raw fan-out → 3"}
BUSES = ["redis", "nats", "local"]
COLORS = {"c": "#1f77b4", "go": "#ff7f0e", "raw": "#7f7f7f"}


def load(path):
    with open(path) as f:
        return json.load(f)


def index(records):
    return {(r["impl"], r["bus"], r["scenario"], r["inflight"], r["payload"]): r
            for r in records}


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}"


def fmt_num(x, unit=""):
    if x is None:
        return "n/a"
    if x >= 100000:
        return f"{x / 1000:.0f}k{unit}"
    if x >= 10000:
        return f"{x / 1000:.1f}k{unit}"
    if x >= 100:
        return f"{x:.0f}{unit}"
    return f"{x:.1f}{unit}"


def payload_label(p):
    return "16 KiB" if p == 16384 else f"{p} B"


def tables(records):
    idx = index(records)
    out = []
    keys = sorted({(r["bus"], r["scenario"], r["inflight"], r["payload"]) for r in records
                   if r["impl"] in ("c", "go")},
                  key=lambda k: (BUSES.index(k[0]), SCEN_ORDER.index(k[1]), k[2], k[3]))
    for bus in BUSES:
        rows = [k for k in keys if k[0] == bus]
        if not rows:
            continue
        out.append(f"### {bus}\n")
        out.append("| scenario | in flight | payload | C p50 / p99 µs | Go p50 / p99 µs | "
                   "raw p50 µs | C /s | Go /s | raw /s | C cpu µs/op | Go cpu µs/op | "
                   "C RSS KiB | Go RSS KiB | **p50 C/Go** | **p99 C/Go** | **/s C/Go** | "
                   "**cpu C/Go** | **RSS C/Go** | **p50 C/raw** | **/s C/raw** |")
        out.append("|" + "---|" * 20)
        for (_, scen, inf, pay) in rows:
            c = idx.get(("c", bus, scen, inf, pay), {})
            g = idx.get(("go", bus, scen, inf, pay), {})
            r = idx.get(("raw", bus, RAW_OF[scen], inf, pay), {})
            cells = [
                SCEN_LABEL[scen], str(inf), payload_label(pay),
                f"{fmt_num(c.get('p50_us'))} / {fmt_num(c.get('p99_us'))}",
                f"{fmt_num(g.get('p50_us'))} / {fmt_num(g.get('p99_us'))}",
                fmt_num(r.get("p50_us")) if r else "—",
                fmt_num(c.get("per_s")), fmt_num(g.get("per_s")),
                fmt_num(r.get("per_s")) if r else "—",
                fmt_num(c.get("cpu_us_per_op")), fmt_num(g.get("cpu_us_per_op")),
                str(c.get("rss_kib", "n/a")), str(g.get("rss_kib", "n/a")),
                fmt_ratio(ratio(c.get("p50_us"), g.get("p50_us"))),
                fmt_ratio(ratio(c.get("p99_us"), g.get("p99_us"))),
                fmt_ratio(ratio(c.get("per_s"), g.get("per_s"))),
                fmt_ratio(ratio(c.get("cpu_us_per_op"), g.get("cpu_us_per_op"))),
                fmt_ratio(ratio(c.get("rss_kib"), g.get("rss_kib"))),
                fmt_ratio(ratio(c.get("p50_us"), r.get("p50_us"))) if r else "—",
                fmt_ratio(ratio(c.get("per_s"), r.get("per_s"))) if r else "—",
            ]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    raws = [r for r in records if r["impl"] == "raw"]
    if raws:
        out.append("### raw floor (hiredis, nats.c)\n")
        out.append("| bus | pattern | in flight | payload | p50 µs | p90 µs | p99 µs | /s | "
                   "cpu µs/op | RSS KiB |")
        out.append("|" + "---|" * 10)
        for r in sorted(raws, key=lambda r: (BUSES.index(r["bus"]), r["scenario"],
                                             r["inflight"], r["payload"])):
            out.append(f"| {r['bus']} | {SCEN_LABEL[r['scenario']]} | {r['inflight']} | "
                       f"{payload_label(r['payload'])} | {fmt_num(r['p50_us'])} | "
                       f"{fmt_num(r['p90_us'])} | {fmt_num(r['p99_us'])} | "
                       f"{fmt_num(r['per_s'])} | {fmt_num(r['cpu_us_per_op'])} | "
                       f"{r['rss_kib']} |")
        out.append("")
    return "\n".join(out)


def verdict(ok):
    return "met" if ok else "**missed**"


def targets(records):
    idx = index(records)
    out = ["| target | bus | payload | measured | verdict |", "|---|---|---|---|---|"]

    def g(impl, bus, scen, inf, pay, field):
        return idx.get((impl, bus, scen, inf, pay), {}).get(field)

    for bus in ["redis", "nats"]:
        for pay in [64, 16384]:
            c50 = g("c", bus, "single", 1, pay, "p50_us")
            c99 = g("c", bus, "single", 1, pay, "p99_us")
            r50 = g("raw", bus, "pingpong4", 1, pay, "p50_us")
            g50 = g("go", bus, "single", 1, pay, "p50_us")
            g99 = g("go", bus, "single", 1, pay, "p99_us")
            x = ratio(c50, r50)
            if x is not None:
                out.append(f"| latency, 1 in flight: C p50 ≤ 1.25 × raw 4-hop p50 | {bus} | "
                           f"{payload_label(pay)} | {c50:.0f} / {r50:.0f} µs = {x:.2f} × | "
                           f"{verdict(x <= 1.25)} |")
            if c50 is not None and g50 is not None and c99 is not None and g99 is not None:
                out.append(f"| latency, 1 in flight: C p50 and p99 below Go's | {bus} | "
                           f"{payload_label(pay)} | p50 {c50:.0f} vs {g50:.0f} µs "
                           f"({c50 / g50:.2f} ×), p99 {c99:.0f} vs {g99:.0f} µs "
                           f"({c99 / g99:.2f} ×) | {verdict(c50 < g50 and c99 < g99)} |")
            ct = g("c", bus, "single", 256, pay, "per_s")
            rt = g("raw", bus, "pingpong4", 256, pay, "per_s")
            gt = g("go", bus, "single", 256, pay, "per_s")
            x = ratio(ct, rt)
            if x is not None:
                out.append(f"| throughput, 256 in flight: C ≥ 0.6 × raw 4-hop | {bus} | "
                           f"{payload_label(pay)} | {ct:.0f} / {rt:.0f} /s = {x:.2f} × | "
                           f"{verdict(x >= 0.6)} |")
            x = ratio(ct, gt)
            if x is not None:
                out.append(f"| throughput, 256 in flight: C ≥ 2 × Go | {bus} | "
                           f"{payload_label(pay)} | {ct:.0f} / {gt:.0f} /s = {x:.2f} × | "
                           f"{verdict(x >= 2)} |")
    for field, name in [("cpu_us_per_op", "CPU per operation"), ("rss_kib", "peak RSS")]:
        pairs = []
        for r in records:
            if r["impl"] != "c":
                continue
            go = idx.get(("go", r["bus"], r["scenario"], r["inflight"], r["payload"]))
            if go and r[field] is not None and go[field]:
                pairs.append((r[field] / go[field], r))
        if pairs:
            worse = [p for p in pairs if p[0] >= 1]
            lo = min(p[0] for p in pairs)
            hi = max(p[0] for p in pairs)
            detail = f"C/Go from {lo:.2f} to {hi:.2f} over {len(pairs)} cells"
            if worse:
                detail += "; not below Go in: " + ", ".join(
                    f"{p[1]['bus']}/{p[1]['scenario']}/{p[1]['inflight']}/"
                    f"{payload_label(p[1]['payload'])} ({p[0]:.2f})" for p in worse)
            out.append(f"| {name}: below Go's in every cell | all | both | {detail} | "
                       f"{verdict(not worse)} |")
    for pay in [64, 16384]:
        v = g("c", "local", "single", 256, pay, "per_s")
        if v is not None:
            out.append(f"| in-process bus: ≥ 200k single requests/s, 256 in flight | local | "
                       f"{payload_label(pay)} | {v:.0f} /s | {verdict(v >= 200000)} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------
# SVG

def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def panel(rows, title, unit, y0, width=900):
    """rows: [(label, {impl: value})]; log-scale horizontal bars."""
    label_w, right = 250, 70
    bar_h, gap = 6, 8
    row_h = 3 * bar_h + gap
    vals = [v for _, d in rows for v in d.values() if v]
    if not vals:
        return "", y0
    lo = 10 ** math.floor(math.log10(min(vals)))
    hi = 10 ** math.ceil(math.log10(max(vals)))
    if hi <= lo:
        hi = lo * 10
    plot_w = width - label_w - right

    def x(v):
        return label_w + plot_w * (math.log10(v) - math.log10(lo)) / (
            math.log10(hi) - math.log10(lo))

    parts = [f'<text x="10" y="{y0 + 16}" font-size="14" font-weight="bold">{esc(title)}</text>']
    top = y0 + 28
    height = len(rows) * row_h
    d = lo
    while d <= hi * 1.0001:
        for m in (1, 2, 5):
            v = d * m
            if v > hi * 1.0001 or v < lo:
                continue
            xx = x(v)
            parts.append(f'<line x1="{xx:.1f}" y1="{top}" x2="{xx:.1f}" y2="{top + height}" '
                         f'stroke="#ddd" stroke-width="{1 if m == 1 else 0.5}"/>')
            if m == 1 or len(rows) > 0:
                parts.append(f'<text x="{xx:.1f}" y="{top + height + 12}" font-size="9" '
                             f'text-anchor="middle" fill="#555">{fmt_num(v)}</text>')
        d *= 10
    parts.append(f'<text x="{label_w + plot_w / 2}" y="{top + height + 26}" font-size="10" '
                 f'text-anchor="middle" fill="#333">{esc(unit)} (log scale)</text>')
    for i, (label, dd) in enumerate(rows):
        ry = top + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{ry + row_h / 2 + 2}" font-size="10" '
                     f'text-anchor="end">{esc(label)}</text>')
        for j, impl in enumerate(["c", "go", "raw"]):
            v = dd.get(impl)
            if not v:
                continue
            by = ry + j * bar_h
            parts.append(f'<rect x="{label_w}" y="{by}" width="{max(1.0, x(v) - label_w):.1f}" '
                         f'height="{bar_h - 1}" fill="{COLORS[impl]}"/>')
            parts.append(f'<text x="{x(v) + 3:.1f}" y="{by + bar_h - 1}" font-size="7" '
                         f'fill="#333">{fmt_num(v)}</text>')
    return "\n".join(parts), top + height + 40


def svg(records):
    idx = index(records)
    lat_rows, thr_rows = [], []
    for bus in BUSES:
        for pay in [64, 16384]:
            for scen in ["single", "affinity", "multi", "stream"]:
                d = {}
                for impl in ["c", "go"]:
                    d[impl] = idx.get((impl, bus, scen, 1, pay), {}).get("p50_us")
                d["raw"] = idx.get(("raw", bus, RAW_OF[scen], 1, pay), {}).get("p50_us")
                if any(d.values()):
                    lat_rows.append((f"{bus} {scen} · {payload_label(pay)}", d))
            for scen, inf in [("single", 256), ("affinity", 64), ("multi", 64), ("sub", 64),
                              ("stream", 64)]:
                d = {}
                for impl in ["c", "go"]:
                    d[impl] = idx.get((impl, bus, scen, inf, pay), {}).get("per_s")
                d["raw"] = idx.get(("raw", bus, RAW_OF[scen], inf, pay), {}).get("per_s")
                if any(d.values()):
                    thr_rows.append((f"{bus} {scen} ×{inf} · {payload_label(pay)}", d))
    width = 900
    p1, y = panel(lat_rows, "p50 latency, 1 in flight (lower is better)", "µs", 40, width)
    p2, y = panel(thr_rows, "throughput (higher is better)", "operations/s", y, width)
    legend = []
    for i, (impl, name) in enumerate([("c", "libpsrpc (C)"), ("go", "livekit/psrpc (Go)"),
                                      ("raw", "raw broker client floor")]):
        lx = 10 + i * 200
        legend.append(f'<rect x="{lx}" y="10" width="12" height="10" fill="{COLORS[impl]}"/>')
        legend.append(f'<text x="{lx + 16}" y="19" font-size="11">{esc(name)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(legend) + "\n" + p1 + "\n" + p2 + "\n</svg>\n")


def meta_text(meta):
    if not meta:
        return ""
    lines = []
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--meta", default=os.path.join(HERE, "results.meta.json"))
    ap.add_argument("--template", default=os.path.join(HERE, "benchmarks.md.in"))
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--svg", default=os.path.join(HERE, "results.svg"))
    args = ap.parse_args()
    records = load(args.results)
    meta = load(args.meta) if os.path.exists(args.meta) else {}
    with open(args.svg, "w") as f:
        f.write(svg(records))
    with open(args.template) as f:
        doc = f.read()
    chart = os.path.relpath(args.svg, os.path.dirname(os.path.abspath(args.doc)))
    doc = (doc.replace("{{META}}", meta_text(meta))
              .replace("{{TARGETS}}", targets(records))
              .replace("{{TABLES}}", tables(records))
              .replace("{{CHART}}", f"![latency and throughput per scenario]({chart})"))
    with open(args.doc, "w") as f:
        f.write(doc)
    print(f"render.py: wrote {args.doc} and {args.svg}")


if __name__ == "__main__":
    main()
