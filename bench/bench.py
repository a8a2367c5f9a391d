#!/usr/bin/env python3
"""bench.py — runs the benchmark matrix (bench/run.sh calls it).

For every cell (impl x bus x scenario x in-flight x payload) it starts the
processes of the cell (servers, subscribers, then the measuring client or
publisher; one process on the local bus), reads their line protocol
(bench/c/bench_common.h), samples user+sys CPU of every process of the cell
from /proc/PID/stat at START and END, peak RSS (VmHWM) of every process after
the measuring one reported, and merges the latency histograms. Each cell runs
--repeat times (all cells once, then all again: noise from other load is
spread over the implementations alike) and the median of each figure is
reported.

    bench.py --c-bin DIR --go-bin FILE --redis URL --nats URL [--quick]
             [--repeat N] [--only REGEX] [--out bench/results.json]
"""

import argparse
import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CLK_TCK = os.sysconf("SC_CLK_TCK")

PAYLOADS = [64, 16384]
# (scenario, in flight, servers or subscribers)
SCENARIOS = [
    ("single", 1, 1), ("single", 64, 1), ("single", 256, 1),
    ("affinity", 1, 3), ("affinity", 64, 3),
    ("multi", 1, 3), ("multi", 64, 3),
    ("sub", 64, 3),
    ("stream", 1, 1), ("stream", 64, 1),
]
RAW = [
    ("pingpong2", 1, 1), ("pingpong2", 64, 1), ("pingpong2", 256, 1),
    ("pingpong4", 1, 1), ("pingpong4", 64, 1), ("pingpong4", 256, 1),
    ("fanout", 64, 3),
]
# The scaling curve (libpsrpc only, Redis and NATS, 64 B, queue calls as
# `single`): scenario scaleN = N buses in the client process and N in the
# server process, the in-flight calls spread over them.
SCALE_INFLIGHT = {1: [1, 4, 16, 64, 256, 1024], 2: [16, 256, 1024], 4: [16, 256, 1024]}
SCALE_INFLIGHT_QUICK = {1: [256, 1024], 2: [256], 4: [256]}
# The bindings as clients of the C server (psrpc_bench --role server), the
# `single` scenario, 64 B: impl -> in-flight counts (quick: fewer).
BINDINGS = {"python": [1], "python-aio": [1, 256], "node": [1, 256], "rust": [1, 256]}
BINDINGS_QUICK = {"python": [1], "python-aio": [256], "node": [256], "rust": [256]}
FIELDS = ["impl", "bus", "scenario", "inflight", "payload", "p50_us", "p90_us", "p99_us",
          "per_s", "cpu_us_per_op", "rss_kib"]


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cpu_us(pid):
    """user+sys of a process (all its threads, live and dead), microseconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) * 1e6 / CLK_TCK
    except (OSError, IndexError):
        return None


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def percentile(hist, q):
    total = sum(c for _, c in hist)
    if total == 0:
        return None
    acc = 0
    for v, c in hist:
        acc += c
        if acc >= q * total:
            return v
    return hist[-1][0]


import tempfile

class Proc:
    def __init__(self, argv, pass_fds=()):
        self.argv = argv
        self.err = tempfile.TemporaryFile()
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.err, pass_fds=pass_fds, bufsize=0)
        self.buf = b""
        self.lines = []
        self.eof = False

    def pid(self):
        return self.p.pid

    def _fill(self, timeout):
        if self.eof:
            return False
        r, _, _ = select.select([self.p.stdout], [], [], timeout)
        if not r:
            return False
        chunk = os.read(self.p.stdout.fileno(), 65536)
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        while b"\n" in self.buf:
            line, self.buf = self.buf.split(b"\n", 1)
            self.lines.append(line.decode(errors="replace"))
        return True

    def expect(self, prefix, timeout):
        """Returns the first line starting with prefix (skipping others)."""
        deadline = time.monotonic() + timeout
        while True:
            while self.lines:
                line = self.lines.pop(0)
                if line.startswith(prefix):
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or self.eof:
                raise RuntimeError(f"{os.path.basename(self.argv[0])} {' '.join(self.argv[1:])}: "
                                   f"no {prefix} ({'exited' if self.eof else 'timeout'}): "
                                   f"{self.stderr_tail()}")
            self._fill(min(left, 0.5))

    def stderr_tail(self):
        try:
            self.err.seek(0)
            return self.err.read().decode(errors="replace")[-500:]
        except (OSError, ValueError):
            return ""

    def close_stdin(self):
        try:
            self.p.stdin.close()
        except OSError:
            pass

    def finish(self, timeout=10):
        """Closes stdin, collects the remaining lines, waits."""
        self.close_stdin()
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self._fill(0.2)
        try:
            self.p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        out, self.lines = self.lines, []
        return out

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


def bus_url(args, impl, bus):
    if bus == "local":
        return args.c_local_url if impl == "c" else "local://"
    return args.redis if bus == "redis" else args.nats


def program(args, impl, bus):
    if impl == "raw" and bus == "nats":  # the NATS floor: text protocol over libuv
        return os.path.join(args.c_bin, "raw_nats_uv")
    return {"c": os.path.join(args.c_bin, "psrpc_bench"), "go": args.go_bin,
            "raw": os.path.join(args.c_bin, "raw_bench"),
            "natsc": os.path.join(args.c_bin, "raw_bench"),
            "natsc-uv": os.path.join(args.c_bin, "raw_natsc_uv")}[impl]


def short(path):
    """A path inside the repository, relative to it (for the meta file)."""
    root = os.path.dirname(HERE)
    return os.path.relpath(path, root) if path.startswith(root + os.sep) else path


def binding_argv(args, impl):
    """The client command of a binding, or None when it was not built."""
    if impl in ("python", "python-aio"):
        if not args.python:
            return None
        return [args.python, os.path.join(HERE, "python", "bench_client.py"),
                "--mode", "sync" if impl == "python" else "aio"]
    if impl == "node":
        return [args.node, os.path.join(HERE, "node", "bench_client.mjs")] if args.node else None
    if impl == "rust":
        return [args.rust_bin] if args.rust_bin else None
    return None


def redis_flushall(url):
    """FLUSHALL on the (private) Redis at url: each cell starts on an empty
    keyspace, not among the previous cell's queue locks (SET ... EX 5: up to
    ~500,000 keys still expiring after a fast cell)."""
    out = subprocess.run(["redis-cli", "-u", url, "FLUSHALL"], capture_output=True, text=True,
                         timeout=30)
    if out.returncode != 0 or out.stdout.strip() != "OK":
        raise RuntimeError(f"redis-cli FLUSHALL: {out.stdout.strip()} {out.stderr.strip()}")


def run_cell(args, cell):
    impl, bus, scenario, inflight, payload, peers = cell
    if bus == "redis" and args.flush_redis:
        redis_flushall(bus_url(args, impl, bus))
    binding = impl in BINDINGS
    if binding:
        exe = program(args, "c", bus)
        client_argv = binding_argv(args, impl)
        if client_argv is None:
            raise RuntimeError(f"the {impl} binding is not built")
    else:
        exe = program(args, impl, bus)
        client_argv = [exe]
    url = bus_url(args, impl, bus)
    extra_args = []
    if scenario.startswith("scale"):
        extra_args = ["--buses", scenario[len("scale"):]]
    common = extra_args + ["--bus", url, "--scenario",
                           "scale" if extra_args else scenario, "--inflight", str(inflight),
              "--payload", str(payload), "--warmup", str(args.warmup),
              "--duration", str(args.duration)]
    procs, pipes = [], []
    fan = scenario in ("sub", "fanout")
    try:
        if bus == "local":
            extra = ["--subs", str(peers)] if fan else ["--servers", str(peers)]
            measurer = Proc(client_argv + ["--role", "local"] + common + extra)
            procs.append(measurer)
            measurer.expect("READY", 30)
        else:
            if fan:
                reads = []
                for i in range(peers):
                    r, w = os.pipe()
                    pipes += [r, w]
                    reads.append(r)
                    p = Proc([exe, "--role", "subscriber", "--credit-fd", str(w)] + common,
                             pass_fds=(w,))
                    procs.append(p)
                for p in procs:
                    p.expect("READY", 30)
                measurer = Proc([exe, "--role", "publisher", "--credit-fds",
                                 ",".join(map(str, reads))] + common, pass_fds=tuple(reads))
            else:
                for i in range(peers):
                    procs.append(Proc([exe, "--role", "server", "--id", str(i)] + common))
                for p in procs:
                    p.expect("READY", 30)
                measurer = Proc(client_argv + ["--role", "client"] + common)
            procs.append(measurer)
            for fd in pipes:
                os.close(fd)
            pipes = []
            measurer.expect("READY", 30)
        measurer.expect("START", 30 + args.warmup)
        cpu0 = [cpu_us(p.pid()) for p in procs]
        measurer.expect("END", 30 + args.duration)
        cpu1 = [cpu_us(p.pid()) for p in procs]
        res = json.loads(measurer.expect("RESULT", 30)[len("RESULT "):])
        rss = [hwm_kib(p.pid()) for p in procs]
        results = [res]
        for p in procs:
            for line in p.finish():
                if line.startswith("RESULT "):
                    results.append(json.loads(line[len("RESULT "):]))
    finally:
        for fd in pipes:
            os.close(fd)
        for p in procs:
            p.kill()
    if None in cpu0 or None in cpu1 or None in rss:
        raise RuntimeError("a process of the cell exited early")
    ops = res["ops"]
    if ops <= 0:
        raise RuntimeError("no operations completed")
    hist = {}
    lat_role = "subscriber" if fan else ("client" if res["role"] == "client" else None)
    for r in results:
        if r["role"] == lat_role:
            for v, c in r["hist"]:
                hist[v] = hist.get(v, 0) + c
    h = sorted(hist.items())
    errors = sum(r.get("errors", 0) for r in results)
    cpu = sum(b - a for a, b in zip(cpu0, cpu1))
    return {
        "p50_us": percentile(h, 0.50), "p90_us": percentile(h, 0.90),
        "p99_us": percentile(h, 0.99), "per_s": ops / res["elapsed_s"],
        "cpu_us_per_op": cpu / ops, "rss_kib": sum(rss), "errors": errors,
    }


def quick_subset(rows):
    """--quick: each scenario once at 64 B, at its largest in-flight count,
    plus the first (scenario, in flight) of the list at every payload size.
    Every code path still runs; the grid is the full run's job."""
    last = {}
    for scenario, inflight, peers in rows:
        last[scenario] = (scenario, inflight, peers)
    out = [(row, 64) for row in last.values()]
    out += [(rows[0], p) for p in PAYLOADS if (rows[0], p) not in out and p != 64]
    return out


def cells(args):
    out = []
    grid = [(row, p) for row in SCENARIOS for p in PAYLOADS]
    raw_grid = [(row, p) for row in RAW for p in PAYLOADS]
    if args.quick:
        grid, raw_grid = quick_subset(SCENARIOS), quick_subset(RAW)
    for bus in ["local", "redis", "nats"]:
        for (scenario, inflight, peers), payload in grid:
            for impl in ["c", "go"]:
                out.append((impl, bus, scenario, inflight, payload, peers))
        if bus != "local":
            for (scenario, inflight, peers), payload in raw_grid:
                out.append(("raw", bus, scenario, inflight, payload, peers))
                # nats.c with its defaults (own threads): what that costs
                if bus == "nats" and (not args.quick or (scenario == "pingpong4" and
                                                         inflight in (1, 256) and
                                                         payload == 64)):
                    out.append(("natsc", bus, scenario, inflight, payload, peers))
                # nats.c on the same libuv loop (its adapter, synchronous
                # subscriptions): the other candidate for the floor
                if bus == "nats" and scenario != "fanout" and not args.quick:
                    out.append(("natsc-uv", bus, scenario, inflight, payload, peers))
    for bus in ["redis", "nats"] if args.quick else ["local", "redis", "nats"]:
        for impl, infl in (BINDINGS_QUICK if args.quick else BINDINGS).items():
            for inflight in infl:
                out.append((impl, bus, "single", inflight, 64, 1))
    for bus in ["redis", "nats"]:
        for nb, infl in (SCALE_INFLIGHT_QUICK if args.quick else SCALE_INFLIGHT).items():
            for inflight in infl:
                out.append(("c", bus, f"scale{nb}", inflight, 64, 1))
    if args.only:
        rx = re.compile(args.only)
        out = [c for c in out if rx.search("/".join(map(str, c[:5])))]
    return out


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_meta(args, load0, seconds):
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "commit": sh(f"git -C {HERE} rev-parse --short HEAD"),
        "mode": ("quick" if args.quick else "full") + f": {args.repeat} run(s) per cell "
                f"(median), warm-up {args.warmup} s, measured window {args.duration} s",
        "machine": f"{os.cpu_count()} CPUs ({cpu}), {sh('uname -sr')}",
        "load average": f"{load0[0]:.2f} at start, {os.getloadavg()[0]:.2f} at end "
                        "(the machine is shared: other jobs ran alongside)",
        "duration": f"{seconds / 60:.1f} min",
    }
    for n in args.note:
        k, _, v = n.partition("=")
        meta[k] = v
    return meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--c-bin", required=True)
    ap.add_argument("--go-bin", required=True)
    ap.add_argument("--redis", required=True)
    ap.add_argument("--nats", required=True)
    ap.add_argument("--c-local-url", default="local://")
    ap.add_argument("--python", help="a python with the psrpc binding installed")
    ap.add_argument("--node", help="node, with bindings/node built")
    ap.add_argument("--rust-bin", help="bench/rust's psrpc-bench-client")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--flush-redis", action="store_true",
                    help="FLUSHALL the Redis before each Redis cell (a private broker only)")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--warmup", type=float)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--only", help="regex over impl/bus/scenario/inflight/payload")
    ap.add_argument("--out", default=os.path.join(HERE, "results.json"))
    ap.add_argument("--meta-out", help="default: beside --out, NAME.meta.json")
    ap.add_argument("--note", action="append", default=[], help="KEY=VALUE for the meta file")
    args = ap.parse_args()
    if args.meta_out is None:
        args.meta_out = os.path.splitext(args.out)[0] + ".meta.json"
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.warmup is None:
        args.warmup = 0.2 if args.quick else 0.3
    if args.duration is None:
        args.duration = 0.6 if args.quick else 1.2

    todo = cells(args)
    load0 = os.getloadavg()
    log(f"bench.py: {len(todo)} cells x {args.repeat} runs, "
        f"warm-up {args.warmup} s, window {args.duration} s")
    runs = {c: [] for c in todo}
    t_start = time.monotonic()
    for rep in range(args.repeat):
        for i, cell in enumerate(todo):
            for attempt in range(2):
                try:
                    r = run_cell(args, cell)
                    runs[cell].append(r)
                    log(f"[{rep + 1}/{args.repeat} {i + 1}/{len(todo)}] {'/'.join(map(str, cell[:5]))}: "
                        f"p50 {r['p50_us']} p99 {r['p99_us']} us, {r['per_s']:.0f}/s, "
                        f"cpu {r['cpu_us_per_op']:.1f} us/op, rss {r['rss_kib']} KiB"
                        + (f", {r['errors']} ERRORS" if r["errors"] else ""))
                    break
                except Exception as e:  # noqa: BLE001 — one failed cell must not end the run
                    log(f"[{rep + 1}/{args.repeat} {i + 1}/{len(todo)}] {'/'.join(map(str, cell[:5]))}: "
                        f"FAILED (attempt {attempt + 1}): {e}")
                    if "no operations completed" in str(e) or "is not built" in str(e):
                        break  # it ran and made no progress: a retry would not either
    records = []
    for cell in todo:
        impl, bus, scenario, inflight, payload, _ = cell
        rs = runs[cell]
        rec = {"impl": impl, "bus": bus, "scenario": scenario, "inflight": inflight,
               "payload": payload}
        for k in FIELDS[5:]:
            vals = [r[k] for r in rs if r[k] is not None]
            v = statistics.median(vals) if vals else None
            if v is not None:
                v = round(v, 1) if k != "rss_kib" else int(v)
            rec[k] = v
        records.append(rec)
        errs = sum(r["errors"] for r in rs)
        if errs:
            log(f"note: {'/'.join(map(str, cell[:5]))}: {errs} failed operations over its runs")
    with open(args.out, "w") as f:
        f.write("[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    log(f"bench.py: wrote {args.out} ({len(records)} records) in "
        f"{time.monotonic() - t_start:.0f} s")
    meta = run_meta(args, load0, time.monotonic() - t_start)
    failed = ["/".join(map(str, c[:5])) for c in todo if not runs[c]]
    meta["cells without a result"] = ", ".join(failed) if failed else "none"
    meta["bindings"] = ", ".join(
        f"{impl}: {' '.join(short(a) for a in binding_argv(args, impl)) if binding_argv(args, impl) else 'not built (its cells are missing)'}"
        for impl in BINDINGS)
    partial = [f"{'/'.join(map(str, c[:5]))} ({len(runs[c])} of {args.repeat})"
               for c in todo if runs[c] and len(runs[c]) < args.repeat]
    if partial:
        meta["cells with fewer runs"] = ", ".join(partial)
    errs = [f"{'/'.join(map(str, c[:5]))}: {sum(r['errors'] for r in runs[c])}"
            for c in todo if sum(r["errors"] for r in runs[c])]
    if errs:
        meta["failed operations (timeouts) over the runs"] = ", ".join(errs)
    with open(args.meta_out, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    # A missing libpsrpc or raw cell fails the run; a Go cell that cannot
    # run (see docs/benchmarks.md) is reported as n/a.
    # A binding that could not be built is reported in the meta file.
    missing = [r for r in records if r["per_s"] is None and r["impl"] != "go"
               and r["impl"] not in BINDINGS]
    return 1 if missing else 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
