#!/usr/bin/env python3
"""A TCP proxy that holds every connection to a fixed rate in each direction, as CDNs and
long-distance links do (the aggregate grows with the number of connections).

    python3 benches/throttle.py LISTEN_PORT UPSTREAM_HOST:PORT BYTES_PER_SECOND

Listens on 127.0.0.1:LISTEN_PORT until killed. Used by benches/bench.sh.
"""
import asyncio
import sys
import time

CHUNK = 64 * 1024
# Seconds of the rate a connection may send at once after a pause.
BURST = 0.1


async def pipe(reader, writer, rate):
    # A token bucket holding at most BURST seconds of the rate: a kept-alive connection that
    # sat idle earns no more than that (measuring from the connection's start would let it
    # catch up on its idle time at full speed, which no CDN allows).
    allowance = 0.0
    last = time.monotonic()
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
            now = time.monotonic()
            allowance = min(BURST * rate, allowance + (now - last) * rate) - len(data)
            last = now
            if allowance < 0:
                await asyncio.sleep(-allowance / rate)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def handle(client_reader, client_writer, upstream, rate):
    host, port = upstream.rsplit(":", 1)
    try:
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
    except OSError:
        client_writer.close()
        return
    await asyncio.gather(
        pipe(client_reader, up_writer, rate),
        pipe(up_reader, client_writer, rate),
    )


async def main():
    listen, upstream, rate = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, upstream, rate), "127.0.0.1", listen
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
