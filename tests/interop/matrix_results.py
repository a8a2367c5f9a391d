#!/usr/bin/env python3
"""matrix_results.py: collects the cells run by matrix.sh (OUT/cells/*.tsv and
*.scen) into OUT/results.json and OUT/results.tsv, prints the table, and with
--render DOC rewrites the section of DOC between the interop-matrix markers.
Exit status 1 if a cell or the method-table check failed."""

import argparse
import datetime
import glob
import json
import os
import re
import sys

BEGIN = "<!-- interop-matrix:begin (tests/interop/matrix.sh --render writes this section) -->"
END = "<!-- interop-matrix:end -->"


def dur(s):
    s = int(s)
    return f"{s // 60} min {s % 60} s" if s >= 60 else f"{s} s"


def load(out):
    cells = []
    for path in sorted(glob.glob(os.path.join(out, "cells", "*.tsv"))):
        with open(path, encoding="utf-8") as f:
            bus, client, server, status, npass, nfail, secs, log = f.read().rstrip("\n").split("\t")
        scen = {}
        with open(path[:-4] + ".scen", encoding="utf-8") as f:
            for line in f:
                name, res, t = line.rstrip("\n").split("\t")
                scen[name] = {"result": res.lower(), "seconds": float(t)}
        mixed = client == "mixed"
        cells.append({
            "bus": bus,
            "mixed": mixed,
            "client": None if mixed else client,
            "server": None if mixed else server,
            "languages": server.split(",") if mixed else [client, server],
            "status": status,
            "scenarios_passed": int(npass),
            "scenarios_failed": int(nfail),
            "scenarios_total": int(npass) + int(nfail),
            "seconds": int(secs),
            "failed_scenarios": sorted(n for n, r in scen.items() if r["result"] == "fail"),
            "scenarios": scen,
            "log": log,
        })
    return cells


def render(doc, res, names):
    langs = res["languages"]

    def name(l):
        return names.get(l, l)

    def cell_text(c):
        if c is None:
            return "—"
        mark = "✓" if c["status"] == "pass" else "✗"
        t = f'{mark} {c["scenarios_passed"]}/{c["scenarios_total"]}, {c["seconds"]} s'
        return t if c["status"] == "pass" else f"**{t}**"

    lines = [BEGIN, ""]
    ncells = len(res["cells"])
    npass = sum(1 for c in res["cells"] if c["status"] == "pass")
    lines.append(
        f'`{res["command"]}` on {res["date"]}, commit `{res["commit"]}`: languages '
        f'{", ".join(name(l) for l in langs)}; **{npass} of {ncells} cells passed**, '
        f'{dur(res["total_seconds"])} in all ({res["lanes"]}; '
        f'each cell\'s time includes starting its processes). A cell\'s entry is '
        f'passed/total scenarios and its time (cells with Go servers have one '
        f'scenario more, `unimplemented`); rows are the client language, '
        f'columns the server language.')
    lines.append("")
    for bus in ("redis", "nats"):
        bc = [c for c in res["cells"] if c["bus"] == bus]
        if not bc:
            continue
        lines.append(f"**{'Redis' if bus == 'redis' else 'NATS'}**")
        lines.append("")
        lines.append("| client ↓ server → | " + " | ".join(name(l) for l in langs) + " |")
        lines.append("| --- |" + " --- |" * len(langs))
        for cl in langs:
            row = []
            for sv in langs:
                c = next((c for c in bc if not c["mixed"] and c["client"] == cl and c["server"] == sv), None)
                row.append(cell_text(c))
            lines.append(f"| {name(cl)} | " + " | ".join(row) + " |")
        for c in bc:
            if c["mixed"]:
                lines.append("")
                lines.append(f'Mixed cell ({" + ".join(name(l) for l in c["languages"])} servers of one '
                             f'service at once, a client of each language): {cell_text(c)}.')
        lines.append("")
    failed = [c for c in res["cells"] if c["status"] != "pass"]
    if failed:
        lines.append("Failed:")
        lines.append("")
        for c in failed:
            what = ", ".join(c["failed_scenarios"]) or "no scenario ran (see its log)"
            lines.append(f'* {c["bus"]} {"mixed" if c["mixed"] else c["client"] + " → " + c["server"]}: {what}')
        lines.append("")
    prep = ", ".join(f'{name(p["language"])} {p["seconds"]} s' + ("" if p["status"] == "ok" else " (FAILED)")
                     for p in res["prepare"])
    lines.append(f'Method tables of every client program against the Go descriptor: '
                 f'{"agree" if res["method_tables"] == "pass" else "**differ**"}. '
                 f'Preparing the languages (build, install) took: {prep}.')
    lines.append("")
    lines.append(END)
    text = open(doc, encoding="utf-8").read()
    if BEGIN not in text or END not in text:
        sys.exit(f"matrix_results: {doc} has no interop-matrix markers")
    a = text.index(BEGIN)
    b = text.index(END) + len(END)
    with open(doc, "w", encoding="utf-8") as f:
        f.write(text[:a] + "\n".join(lines) + text[b:])
    print(f"matrix_results: rendered into {doc}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--total", type=int, required=True)
    ap.add_argument("--commit", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--langs", required=True)
    ap.add_argument("--methods", type=int, required=True)
    ap.add_argument("--parallel", type=int, default=0)
    ap.add_argument("--render")
    a = ap.parse_args()

    names = {}
    try:
        with open(os.path.join(a.out, "slots.json"), encoding="utf-8") as f:
            for l, s in json.load(f).items():
                names[l] = re.split(r"[ (]", s.get("name") or l)[0]
    except (OSError, ValueError):
        pass
    prepare = []
    with open(os.path.join(a.out, "prepare.tsv"), encoding="utf-8") as f:
        for line in f:
            l, st, secs = line.rstrip("\n").split("\t")
            prepare.append({"language": l, "status": st, "seconds": int(secs)})
    res = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": a.commit,
        "command": a.command,
        "languages": a.langs.split(),
        "total_seconds": a.total,
        "lanes": ("redis and nats cells in two parallel lanes" if a.parallel
                  else "cells run one after the other"),
        "method_tables": "pass" if a.methods == 0 else "fail",
        "prepare": prepare,
        "cells": load(a.out),
    }
    with open(os.path.join(a.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, indent=1, ensure_ascii=False)
    with open(os.path.join(a.out, "results.tsv"), "w", encoding="utf-8") as f:
        f.write("bus\tclient\tserver\tstatus\tscenarios_passed\tscenarios_total\tseconds\tfailed_scenarios\n")
        for c in res["cells"]:
            f.write("\t".join([c["bus"], "mixed" if c["mixed"] else c["client"],
                               ",".join(c["languages"]) if c["mixed"] else c["server"], c["status"],
                               str(c["scenarios_passed"]), str(c["scenarios_total"]), str(c["seconds"]),
                               ",".join(c["failed_scenarios"])]) + "\n")
    ok = a.methods == 0 and res["cells"] and all(c["status"] == "pass" for c in res["cells"])
    print()
    print(f"=== interop matrix: {sum(c['status'] == 'pass' for c in res['cells'])} of "
          f"{len(res['cells'])} cells passed, {dur(a.total)}; method tables "
          f"{res['method_tables']} ({a.out}/results.json)")
    for c in res["cells"]:
        who = "mixed " + ",".join(c["languages"]) if c["mixed"] else f'{c["client"]} → {c["server"]}'
        print(f'  {c["bus"]:<5} {who:<16} {c["status"].upper():<4} '
              f'{c["scenarios_passed"]:>2}/{c["scenarios_total"]:<2} {c["seconds"]:>4} s'
              + (f'  failed: {", ".join(c["failed_scenarios"])}' if c["failed_scenarios"] else ""))
    if a.render:
        render(a.render, res, names)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
