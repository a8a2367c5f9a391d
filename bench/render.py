#!/usr/bin/env python3
"""render.py — docs/benchmarks.md and bench/results.svg from bench/results.json.

    render.py [--results bench/results.json] [--meta bench/results.meta.json]
              [--template bench/benchmarks.md.in] [--doc docs/benchmarks.md]
              [--svg bench/results.svg]

The template's placeholders: {{META}} (how and where the run was made),
{{TARGETS}} (the issue's targets against the measured ratios), {{TABLES}}
(every cell with its ratios), {{CHART}} (the SVG's link), {{NATS_FLOOR}}
(libpsrpc against the NATS floor and nats.c's defaults), {{BINDINGS}} (the
bindings' client rows against the C client), {{SCALING}} (throughput against
in-flight calls and buses per process, with the advice drawn from it).
Standard library only.
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
COLORS = {"c": "#1f77b4", "go": "#ff7f0e", "raw": "#7f7f7f", "natsc": "#bcbd22",
          "natsc-uv": "#dbdb8d",
          "python": "#2ca02c", "python-aio": "#98df8a", "node": "#9467bd", "rust": "#8c564b",
          "scale1": "#1f77b4", "scale2": "#17becf", "scale4": "#d62728"}
BINDINGS = ["python", "python-aio", "node", "rust"]
BINDING_LABEL = {"python": "Python (blocking)", "python-aio": "Python (asyncio)",
                 "node": "Node", "rust": "Rust (tokio)"}


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
                   if r["impl"] in ("c", "go") and r["scenario"] in SCEN_ORDER},
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
    raws = [r for r in records if r["impl"] in ("raw", "natsc", "natsc-uv")]
    if raws:
        out.append("### raw floor (hiredis; NATS text protocol over libuv) and nats.c "
                   "defaults\n")
        out.append("| client | bus | pattern | in flight | payload | p50 µs | p90 µs | p99 µs | "
                   "/s | cpu µs/op | RSS KiB |")
        out.append("|" + "---|" * 11)
        for r in sorted(raws, key=lambda r: (BUSES.index(r["bus"]), r["scenario"],
                                             r["inflight"], r["payload"], r["impl"])):
            who = ("nats.c defaults" if r["impl"] == "natsc" else
                   "nats.c on the libuv loop" if r["impl"] == "natsc-uv" else
                   "hiredis" if r["bus"] == "redis" else "raw_nats_uv")
            out.append(f"| {who} | {r['bus']} | {SCEN_LABEL[r['scenario']]} | {r['inflight']} | "
                       f"{payload_label(r['payload'])} | {fmt_num(r['p50_us'])} | "
                       f"{fmt_num(r['p90_us'])} | {fmt_num(r['p99_us'])} | "
                       f"{fmt_num(r['per_s'])} | {fmt_num(r['cpu_us_per_op'])} | "
                       f"{r['rss_kib']} |")
        out.append("")
    return "\n".join(out)


def nats_floor(records):
    """libpsrpc (C) on NATS against the new floor and against nats.c's defaults."""
    idx = index(records)
    out = ["| C scenario | raw pattern | in flight | payload | C p50 µs | floor p50 µs | "
           "nats.c p50 µs | C /s | floor /s | nats.c /s | nats.c on libuv /s | "
           "**p50 C/floor** | **/s C/floor** | **/s C/nats.c** | C cpu µs/op | "
           "floor cpu µs/op | nats.c cpu µs/op | nats.c on libuv cpu µs/op |",
           "|" + "---|" * 18]
    for scen, raw in [("single", "pingpong4"), ("multi", "pingpong2"), ("stream", "pingpong2")]:
        for inf in [1, 64, 256]:
            for pay in [64, 16384]:
                c = idx.get(("c", "nats", scen, inf, pay))
                f = idx.get(("raw", "nats", raw, inf, pay))
                n = idx.get(("natsc", "nats", raw, inf, pay), {})
                u = idx.get(("natsc-uv", "nats", raw, inf, pay), {})
                if not c or not f:
                    continue
                out.append("| " + " | ".join([
                    SCEN_LABEL[scen], SCEN_LABEL[raw].replace("raw ", ""), str(inf),
                    payload_label(pay), fmt_num(c["p50_us"]), fmt_num(f["p50_us"]),
                    fmt_num(n.get("p50_us")) if n else "—",
                    fmt_num(c["per_s"]), fmt_num(f["per_s"]),
                    fmt_num(n.get("per_s")) if n else "—",
                    fmt_num(u.get("per_s")) if u else "—",
                    fmt_ratio(ratio(c["p50_us"], f["p50_us"])),
                    fmt_ratio(ratio(c["per_s"], f["per_s"])),
                    fmt_ratio(ratio(c["per_s"], n.get("per_s"))) if n else "—",
                    fmt_num(c["cpu_us_per_op"]), fmt_num(f["cpu_us_per_op"]),
                    fmt_num(n.get("cpu_us_per_op")) if n else "—",
                    fmt_num(u.get("cpu_us_per_op")) if u else "—"]) + " |")
    if len(out) == 2:
        return "(no NATS cells in this run)"
    text = "\n".join(out)
    # the two floor candidates, where both ran
    thr, cpu = [], []
    for r in records:
        if r["impl"] != "raw" or r["bus"] != "nats" or r["inflight"] == 1:
            continue
        u = idx.get(("natsc-uv", "nats", r["scenario"], r["inflight"], r["payload"]))
        if u and u.get("per_s") and r.get("per_s"):
            thr.append(r["per_s"] / u["per_s"])
            if r.get("cpu_us_per_op") and u.get("cpu_us_per_op"):
                cpu.append(r["cpu_us_per_op"] / u["cpu_us_per_op"])
    if thr:
        text += (f"\n\nThe two floor candidates at 64 and 256 in flight ({len(thr)} cells): the "
                 f"protocol over libuv moved {min(thr):.2f}–{max(thr):.2f} × the message "
                 f"pairs per second of nats.c on the same loop")
        if cpu:
            text += (f", with {min(cpu):.2f}–{max(cpu):.2f} × its CPU per pair "
                     "(client and server processes)")
        text += (". It is the floor: " if min(thr) >= 1 else
                 ". It is the floor in this page; where nats.c was faster, that cell's floor is "
                 "understated: ") + "see the raw table under [All cells](#all-cells)."
    return text


def bindings(records, meta):
    """Each binding's client against the C client, same C server, same run."""
    idx = index(records)
    out = ["| client | bus | in flight | p50 / p99 µs | C p50 / p99 µs | calls/s | C calls/s | "
           "cpu µs/op | C cpu µs/op | RSS KiB | **p50 − C p50 µs** | **/s ÷ C /s** | "
           "**cpu − C cpu µs/op** |", "|" + "---|" * 13]
    missing = []
    for impl in BINDINGS:
        for bus in BUSES:
            for inf in [1, 256]:
                key = (impl, bus, "single", inf, 64)
                if key not in idx:
                    continue
                b = idx[key]
                c = idx.get(("c", bus, "single", inf, 64), {})
                if b.get("per_s") is None:
                    missing.append(f"{BINDING_LABEL[impl]} {bus} ×{inf}")
                    continue
                d50 = (b["p50_us"] - c["p50_us"]) if c.get("p50_us") is not None else None
                dcpu = (b["cpu_us_per_op"] - c["cpu_us_per_op"]
                        if c.get("cpu_us_per_op") is not None else None)
                out.append("| " + " | ".join([
                    BINDING_LABEL[impl], "local¹" if bus == "local" else bus, str(inf),
                    f"{fmt_num(b['p50_us'])} / {fmt_num(b['p99_us'])}",
                    f"{fmt_num(c.get('p50_us'))} / {fmt_num(c.get('p99_us'))}",
                    fmt_num(b["per_s"]), fmt_num(c.get("per_s")),
                    fmt_num(b["cpu_us_per_op"]), fmt_num(c.get("cpu_us_per_op")),
                    str(b["rss_kib"]),
                    "—" if d50 is None else f"{d50:+.0f}",
                    fmt_ratio(ratio(b["per_s"], c.get("per_s"))),
                    "—" if dcpu is None else f"{dcpu:+.1f}"]) + " |")
    text = "\n".join(out) if len(out) > 2 else "(no binding cells in this run)"
    if any(r["impl"] in BINDINGS and r["bus"] == "local" for r in records):
        text += ("\n\n¹ Not like for like: the binding's client and the C echo server run on "
                 "two buses (two loop threads) of one named hub, the C cell on one shared bus "
                 "(one loop thread, no thread hand-off).")
    if missing:
        text += ("\n\nMissing in this run (the binding could not be built or the cell "
                 "failed; see the run's `bindings` line): " + ", ".join(missing) + ".")
    return text


def scaling(records):
    """Throughput of a process against in-flight calls and buses per process."""
    idx = index(records)
    infl = sorted({r["inflight"] for r in records if r["scenario"].startswith("scale")})
    if not infl:
        return "(no scaling cells in this run)"
    out = ["| bus | buses per process | " + " | ".join(f"{i} in flight" for i in infl) + " |",
           "|---|---|" + "---|" * len(infl)]
    advice = []
    for bus in ["redis", "nats"]:
        for nb in [1, 2, 4]:
            row = [idx.get(("c", bus, f"scale{nb}", i, 64), {}).get("per_s") for i in infl]
            if not any(row):
                continue
            cells = []
            for i, v in zip(infl, row):
                p50 = idx.get(("c", bus, f"scale{nb}", i, 64), {}).get("p50_us")
                cells.append("—" if v is None else
                             f"{fmt_num(v)}/s (p50 {fmt_num(p50)} µs)")
            out.append(f"| {bus} | {nb} | " + " | ".join(cells) + " |")
        one = {i: idx.get(("c", bus, "scale1", i, 64), {}).get("per_s") for i in infl}
        known = [(i, v) for i, v in one.items() if v]
        if not known:
            continue
        best = max(v for _, v in known)
        knee = min(i for i, v in known if v >= 0.9 * best)
        s = (f"On {bus}, one bus reaches 90 % of its best throughput here "
             f"({fmt_num(best)}/s) at {knee} calls in flight")
        s += (" (the largest count measured: it may rise further)." if knee == max(one)
              else "; beyond that more calls in flight mostly add latency.")
        gains = []
        for nb in [2, 4]:
            pairs = [(i, idx.get(("c", bus, f"scale{nb}", i, 64), {}).get("per_s"), one.get(i))
                     for i in infl]
            pairs = [(i, v, o) for i, v, o in pairs if v and o]
            if pairs:
                i, v, o = max(pairs, key=lambda t: t[1])
                gains.append((nb, i, v, v / o))
        if gains:
            s += " " + "; ".join(f"{nb} buses per process at {i} in flight: {fmt_num(v)}/s, "
                                 f"{g:.2f} × one bus at the same count" for nb, i, v, g in gains)
            s += "."
            if any(g >= 1.1 for _, _, _, g in gains):
                s += " A second bus paid off in this run."
            else:
                s += (" A second bus did not pay off in this run: its loop thread competes "
                      "for the same cores as the first, the server process and the broker.")
        advice.append(s)
    return "\n".join(out) + "\n\n" + "\n\n".join(advice)


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
                if bus == "redis":
                    out.append(f"| throughput, 256 in flight: C ≥ 0.7 × raw 4-hop (issue 19) | "
                               f"{bus} | {payload_label(pay)} | {ct:.0f} / {rt:.0f} /s = "
                               f"{x:.2f} × | {verdict(x >= 0.7)} |")
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


def panel(rows, title, unit, y0, width=900, impls=("c", "go", "raw")):
    """rows: [(label, {impl: value})]; log-scale horizontal bars, one per impl."""
    label_w, right = 250, 70
    bar_h, gap = 6, 8
    nbars = max(1, max((sum(1 for i in impls if d.get(i)) for _, d in rows), default=1))
    row_h = nbars * bar_h + gap
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
        j = -1
        for impl in impls:
            v = dd.get(impl)
            if not v:
                continue
            j += 1
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
                d["natsc"] = idx.get(("natsc", bus, RAW_OF[scen], 1, pay), {}).get("p50_us")
                if any(d.values()):
                    lat_rows.append((f"{bus} {scen} · {payload_label(pay)}", d))
            for scen, inf in [("single", 256), ("affinity", 64), ("multi", 64), ("sub", 64),
                              ("stream", 64)]:
                d = {}
                for impl in ["c", "go"]:
                    d[impl] = idx.get((impl, bus, scen, inf, pay), {}).get("per_s")
                d["raw"] = idx.get(("raw", bus, RAW_OF[scen], inf, pay), {}).get("per_s")
                d["natsc"] = idx.get(("natsc", bus, RAW_OF[scen], inf, pay), {}).get("per_s")
                if any(d.values()):
                    thr_rows.append((f"{bus} {scen} ×{inf} · {payload_label(pay)}", d))
    bind_lat, bind_thr = [], []
    for bus in BUSES:
        for inf, rows, field in [(1, bind_lat, "p50_us"), (256, bind_thr, "per_s")]:
            d = {impl: idx.get((impl, bus, "single", inf, 64), {}).get(field)
                 for impl in ["c"] + BINDINGS}
            if any(d.get(i) for i in BINDINGS):
                rows.append((f"{bus} single ×{inf} · 64 B", d))
    scale_rows = []
    for bus in ["redis", "nats"]:
        infl = sorted({r["inflight"] for r in records if r["bus"] == bus
                       and r["scenario"].startswith("scale")})
        for inf in infl:
            d = {f"scale{nb}": idx.get(("c", bus, f"scale{nb}", inf, 64), {}).get("per_s")
                 for nb in [1, 2, 4]}
            if any(d.values()):
                scale_rows.append((f"{bus} single ×{inf} · 64 B", d))
    width = 900
    main = ("c", "go", "raw", "natsc")
    y = 40 + 14 * 2  # three legend lines
    p1, y = panel(lat_rows, "p50 latency, 1 in flight (lower is better)", "µs", y, width, main)
    p2, y = panel(thr_rows, "throughput (higher is better)", "operations/s", y, width, main)
    bimpl = tuple(["c"] + BINDINGS)
    p3, y = panel(bind_lat, "bindings against the C server: p50 latency, 1 in flight "
                  "(lower is better)", "µs", y, width, bimpl)
    p4, y = panel(bind_thr, "bindings against the C server: calls/s, 256 in flight "
                  "(higher is better)", "calls/s", y, width, bimpl)
    p5, y = panel(scale_rows, "scaling: calls/s against in flight, 1 / 2 / 4 buses per "
                  "process (higher is better)", "calls/s", y, width,
                  ("scale1", "scale2", "scale4"))
    legend = []
    names = [("c", "libpsrpc (C)"), ("go", "livekit/psrpc (Go)"),
             ("raw", "raw floor (hiredis; NATS protocol over libuv)"),
             ("natsc", "nats.c defaults")] + [(b, BINDING_LABEL[b]) for b in BINDINGS] + [
             ("scale2", "2 buses per process"), ("scale4", "4 buses per process")]
    for i, (impl, name) in enumerate(names):
        lx = 10 + (i % 4) * 220
        ly = 10 + (i // 4) * 14
        legend.append(f'<rect x="{lx}" y="{ly}" width="12" height="10" fill="{COLORS[impl]}"/>')
        legend.append(f'<text x="{lx + 16}" y="{ly + 9}" font-size="11">{esc(name)}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(legend) + "\n" + "\n".join(p for p in [p1, p2, p3, p4, p5] if p)
            + "\n</svg>\n")


def meta_text(meta):
    if not meta:
        return ""
    lines = []
    for k, v in meta.items():
        lines.append(f"- {k}: {v}")
    return "\n".join(lines)


def lookup(idx, ref):
    """impl/bus/scenario/inflight/payload/field -> value or None."""
    impl, bus, scen, inf, pay, field = ref.split("/")
    return idx.get((impl, bus, scen, int(inf), int(pay)), {}).get(field)


def inline_values(doc, records):
    """{{v:impl/bus/scenario/inflight/payload/field}}: one figure of this run;
    {{r:REF|REF}}: the ratio of two. n/a when a cell is missing."""
    import re
    idx = index(records)

    def value(m):
        v = lookup(idx, m.group(1))
        return "n/a" if v is None else (f"{v:,.0f}" if v >= 100 else f"{v:.1f}")

    def rat(m):
        x = ratio(lookup(idx, m.group(1)), lookup(idx, m.group(2)))
        return "n/a" if x is None else f"{x:.2f}"

    doc = re.sub(r"\{\{v:([^}|]+)\}\}", value, doc)
    return re.sub(r"\{\{r:([^}|]+)\|([^}|]+)\}\}", rat, doc)


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
              .replace("{{NATS_FLOOR}}", nats_floor(records))
              .replace("{{BINDINGS}}", bindings(records, meta))
              .replace("{{SCALING}}", scaling(records))
              .replace("{{COMMIT}}", str(meta.get("commit", "?"))))
    doc = (inline_values(doc, records)
              .replace("{{CHART}}", f"![latency and throughput per scenario]({chart})"))
    with open(args.doc, "w") as f:
        f.write(doc)
    print(f"render.py: wrote {args.doc} and {args.svg}")


if __name__ == "__main__":
    main()
