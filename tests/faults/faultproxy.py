#!/usr/bin/env python3
"""faultproxy: a TCP proxy that injects network faults between libpsrpc and a
broker (test plan group D). Python 3 standard library only (asyncio).

    faultproxy.py --listen PORT --target HOST:PORT --control PORT [--seed N]

It forwards every connection accepted on --listen to --target and takes
commands, one per line, on the --control port (loopback); each command is
answered with one line, "ok ..." or "err ...". Faults apply to connections
open now and to those accepted later:

    pass                      no faults (forward as fast as possible)
    delay MS [JITTER_MS]      hold every chunk MS +- JITTER_MS (uniform) in
                              each direction; order within a direction kept
    rate BYTES_PER_S          per connection and direction (0: unlimited)
    reset_random MIN MAX      each connection is reset (RST) after a random
                              number of forwarded bytes in [MIN, MAX] (counted
                              over both directions): mid-frame; new
                              connections draw a fresh offset
    reset_all                 RST every open connection now
    blackhole on|off          stop forwarding (sockets stay open, nothing is
                              read, no reset); off: resume (what was sent in
                              between is then delivered, as after a healed
                              partition)
    halfclose                 shut down the proxy's write side towards each
                              client (the client reads EOF; its own writes
                              are still accepted and forwarded)
    refuse on|off             close new connections at once (after accept)
    stats                     "ok accepted=N open=N resets=N halfclosed=N
                               bytes_up=N bytes_down=N"
    quit                      exit

Options --listen / --control 0 pick free ports; the chosen ones are printed on
stdout as "ports LISTEN CONTROL" once the proxy is ready.
"""

from __future__ import annotations

import argparse
import os
import asyncio
import random
import socket
import struct
import sys
import time


class Faults:
    def __init__(self) -> None:
        self.delay_ms = 0.0
        self.jitter_ms = 0.0
        self.rate = 0
        self.reset_range: tuple[int, int] | None = None
        self.blackhole = False
        self.resume = asyncio.Event()
        self.resume.set()
        self.refuse = False


class Stats:
    def __init__(self) -> None:
        self.accepted = 0
        self.resets = 0
        self.halfclosed = 0
        self.bytes_up = 0
        self.bytes_down = 0


def rst(writer: asyncio.StreamWriter) -> None:
    """Closes with a TCP RST (SO_LINGER 0), not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class Conn:
    def __init__(self, proxy: "Proxy", cr, cw, br, bw) -> None:
        self.proxy = proxy
        self.cr, self.cw, self.br, self.bw = cr, cw, br, bw
        self.forwarded = 0
        self.reset_at: int | None = None
        self.closed = False
        self.client_eof = False  # halfclose: nothing more goes to the client
        self.draw_reset()

    def draw_reset(self) -> None:
        r = self.proxy.faults.reset_range
        self.reset_at = (self.forwarded + self.proxy.rng.randint(r[0], r[1])) if r else None

    def reset(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proxy.stats.resets += 1
        rst(self.cw)
        rst(self.bw)

    def halfclose(self) -> None:
        if self.closed:
            return
        try:
            if not self.client_eof and self.cw.can_write_eof():
                self.client_eof = True
                self.cw.write_eof()
                self.proxy.stats.halfclosed += 1
        except (OSError, RuntimeError):
            pass

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   up: bool) -> None:
        f = self.proxy.faults
        due_last = 0.0
        queue: asyncio.Queue = asyncio.Queue()

        async def sender() -> None:
            while True:
                item = await queue.get()
                if item is None:
                    return
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.closed:
                    return
                if not up and self.client_eof:
                    continue  # the client's read side is shut: dropped
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError, RuntimeError):
                    self.reset()
                    return
                if f.rate > 0:
                    await asyncio.sleep(len(data) / f.rate)

        task = asyncio.ensure_future(sender())
        try:
            while not self.closed:
                await f.resume.wait()
                # Small reads, so that a rate limit is smooth and a reset
                # lands inside frames.
                data = await reader.read(4096 if f.rate == 0 else max(64, min(4096, f.rate // 20)))
                if not data:
                    break
                if self.closed:
                    return
                await f.resume.wait()  # black-holed meanwhile: hold it
                if self.reset_at is not None and self.forwarded + len(data) >= self.reset_at:
                    cut = self.reset_at - self.forwarded
                    if cut > 0:
                        try:
                            writer.write(data[:cut])
                        except (OSError, RuntimeError):
                            pass
                    self.reset()
                    return
                self.forwarded += len(data)
                if up:
                    self.proxy.stats.bytes_up += len(data)
                else:
                    self.proxy.stats.bytes_down += len(data)
                due = time.monotonic()
                if f.delay_ms > 0 or f.jitter_ms > 0:
                    d = f.delay_ms + self.proxy.rng.uniform(-f.jitter_ms, f.jitter_ms)
                    due += max(d, 0.0) / 1000.0
                due = max(due, due_last)
                due_last = due
                queue.put_nowait((due, data))
            # EOF from this side: pass it on once the queue drained.
            queue.put_nowait(None)
            await task
            if not self.closed and (up or not self.client_eof):
                try:
                    if writer.can_write_eof():
                        writer.write_eof()
                except (OSError, RuntimeError):
                    pass
        except (ConnectionError, OSError):
            self.reset()
        finally:
            if not task.done():
                task.cancel()

    async def run(self) -> None:
        self.proxy.conns.add(self)
        try:
            await asyncio.gather(self.pump(self.cr, self.bw, True),
                                 self.pump(self.br, self.cw, False))
        finally:
            self.proxy.conns.discard(self)
            for w in (self.cw, self.bw):
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass


class Proxy:
    def __init__(self, target: tuple[str, int], seed: int) -> None:
        self.target = target
        self.rng = random.Random(seed)
        self.faults = Faults()
        self.stats = Stats()
        self.conns: set[Conn] = set()
        self.done = asyncio.Event()

    async def on_client(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.stats.accepted += 1
        if self.faults.refuse:
            rst(cw)
            return
        try:
            br, bw = await asyncio.open_connection(*self.target)
        except OSError:
            rst(cw)
            return
        await Conn(self, cr, cw, br, bw).run()

    def command(self, line: str) -> str:
        p = line.split()
        if not p:
            return "err empty command"
        f = self.faults
        try:
            if p[0] == "pass":
                f.delay_ms = f.jitter_ms = 0.0
                f.rate = 0
                f.reset_range = None
                f.refuse = False
                f.blackhole = False
                f.resume.set()
                for c in self.conns:
                    c.reset_at = None
            elif p[0] == "delay":
                f.delay_ms = float(p[1])
                f.jitter_ms = float(p[2]) if len(p) > 2 else 0.0
            elif p[0] == "rate":
                f.rate = int(p[1])
            elif p[0] == "reset_random":
                lo, hi = int(p[1]), int(p[2])
                if lo < 1 or hi < lo:
                    return "err bad range"
                f.reset_range = (lo, hi)
                for c in self.conns:
                    c.draw_reset()
            elif p[0] == "reset_all":
                for c in list(self.conns):
                    c.reset()
            elif p[0] == "blackhole":
                f.blackhole = p[1] == "on"
                if f.blackhole:
                    f.resume.clear()
                else:
                    f.resume.set()
            elif p[0] == "halfclose":
                for c in list(self.conns):
                    c.halfclose()
            elif p[0] == "refuse":
                f.refuse = p[1] == "on"
            elif p[0] == "stats":
                s = self.stats
                return (f"ok accepted={s.accepted} open={len(self.conns)} resets={s.resets} "
                        f"halfclosed={s.halfclosed} bytes_up={s.bytes_up} "
                        f"bytes_down={s.bytes_down}")
            elif p[0] == "quit":
                self.done.set()
            else:
                return f"err unknown command {p[0]}"
        except (IndexError, ValueError) as e:
            return f"err {e}"
        return "ok"

    async def on_control(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await r.readline()
                if not line:
                    break
                w.write((self.command(line.decode(errors="replace")) + "\n").encode())
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", type=int, required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT of the broker")
    ap.add_argument("--control", type=int, required=True)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    host, _, port = a.target.rpartition(":")
    proxy = Proxy((host, int(port)), a.seed)
    srv = await asyncio.start_server(proxy.on_client, "127.0.0.1", a.listen, reuse_address=True)
    ctl = await asyncio.start_server(proxy.on_control, "127.0.0.1", a.control, reuse_address=True)
    lp = srv.sockets[0].getsockname()[1]
    cp = ctl.sockets[0].getsockname()[1]
    print(f"ports {lp} {cp}", flush=True)
    await proxy.done.wait()
    srv.close()
    ctl.close()
    for c in list(proxy.conns):
        c.reset()
    await asyncio.sleep(0.05)
    sys.stdout.flush()
    os._exit(0)  # no teardown noise from the pumps still parked in reads


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
