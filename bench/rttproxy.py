#!/usr/bin/env python3
"""A delaying TCP proxy that counts round trips (bench/run.py --rtt MS).

    python bench/rttproxy.py --delay-ms 20 --stats FILE LISTEN_PORT=HOST:PORT [...]

Listens on 127.0.0.1:LISTEN_PORT for each mapping and forwards to HOST:PORT. Every chunk is
delivered delay/2 after it was read, in each direction, so a request/response exchange costs
one extra `delay` (an emulated WAN round trip); order is kept per direction.

Counting: per connection, a *turn* is client data that follows server data (or the first client
data): one request/response exchange, however many packets it took. On each connection's close
a JSON line {"listen": port, "turns": n, "c2s": bytes, "s2c": bytes, "opened": t, "closed": t}
is appended to --stats. Serial round trips of a whole run (turns on two nodes in parallel
overlap) are better read from time: (t_with_delay - t_without) / delay; bench/run.py reports
both. Stdlib only (asyncio).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import time


class Conn:
    def __init__(self, listen: int):
        self.listen = listen
        self.turns = 0
        self.last = None  # "c2s" | "s2c"
        self.bytes = {"c2s": 0, "s2c": 0}
        self.opened = time.time()

    def saw(self, direction: str, n: int) -> None:
        if direction == "c2s" and self.last != "c2s":
            self.turns += 1
        self.last = direction
        self.bytes[direction] += n


async def pipe(reader, writer, delay: float, conn: Conn, direction: str) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            conn.saw(direction, len(data))
            queue.put_nowait((loop.time() + delay, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


def handler(listen: int, target: tuple[str, int], delay: float, stats: str):
    async def handle(creader, cwriter):
        conn = Conn(listen)
        try:
            sreader, swriter = await asyncio.open_connection(*target)
        except OSError:
            cwriter.close()
            return
        for w in (cwriter, swriter):
            sock = w.get_extra_info("socket")
            if sock is not None:
                import socket

                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(creader, swriter, delay, conn, "c2s"), pipe(sreader, cwriter, delay, conn, "s2c"))
        for w in (cwriter, swriter):
            w.close()
        with open(stats, "a") as f:
            f.write(json.dumps({"listen": listen, "turns": conn.turns, "c2s": conn.bytes["c2s"],
                                "s2c": conn.bytes["s2c"], "opened": conn.opened, "closed": time.time()}) + "\n")
    return handle


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--delay-ms", type=float, required=True, help="added round-trip time, ms")
    ap.add_argument("--stats", required=True, help="JSON lines, one per closed connection")
    ap.add_argument("--ready", help="file written once listening")
    ap.add_argument("maps", nargs="+", help="LISTEN_PORT=HOST:PORT")
    a = ap.parse_args()
    delay = a.delay_ms / 1000.0 / 2
    servers = []
    for m in a.maps:
        lport, target = m.split("=", 1)
        host, port = target.rsplit(":", 1)
        servers.append(await asyncio.start_server(handler(int(lport), (host, int(port)), delay, a.stats),
                                                  "127.0.0.1", int(lport)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if a.ready:
        with open(a.ready, "w") as f:
            f.write("ready\n")
    await stop.wait()
    for s in servers:
        s.close()


if __name__ == "__main__":
    asyncio.run(main())
