"""A TCP fault proxy for tests, between an endpoint and a hub: what the kernel here
cannot do without netem.

    async with FaultProxy((net.root_address, 0), (net.hosts["h1"].address, 5555)) as proxy:
        ep = Endpoint("table", proxy.url)
        proxy.delay = 0.05          # every chunk, both ways, 50 ms late
        proxy.hold()                # forward nothing (as lost packets do): no FIN, no RST
        proxy.release()
        proxy.reset_at(10_000)      # RST both sides once 10,000 more bytes went upstream

Loss on a TCP path shows to the application as a stall (the kernel retransmits), so
:meth:`hold` is the loss fault; a reset is sent as a real RST (``SO_LINGER`` 0).

Imported by tests as ``faultproxy`` (tests/support is on pytest's pythonpath)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType


class FaultProxy:
    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen = listen
        self.upstream = upstream
        self.delay = 0.0
        """Seconds each chunk waits before it is forwarded (both directions)."""
        self.connections = 0
        self.resets = 0
        self.forwarded = 0
        """Bytes forwarded upstream (client to server) so far, over all connections."""
        self._open = asyncio.Event()
        self._open.set()
        self._reset_at: int | None = None
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        host, port = self.address
        return f"tcp://{host}:{port}"

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "not started"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def __aenter__(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, *self.listen)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for a, b in list(self._pairs):
            a.close()
            b.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.wait_for(self._server.wait_closed(), 5)

    # -- faults ----------------------------------------------------------------------------

    def hold(self) -> None:
        """Forward nothing until :meth:`release` (connections stay open)."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def reset_at(self, more_bytes: int) -> None:
        """Once ``more_bytes`` more bytes went upstream, reset every connection (RST to
        both sides) as it happens at that byte."""
        self._reset_at = self.forwarded + more_bytes

    # -- internals -------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.upstream), 5
            )
        except (OSError, TimeoutError):
            _abort(writer)
            return
        self.connections += 1
        pair = (writer, up_writer)
        self._pairs.add(pair)
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, pair, upstream=True)),
            asyncio.ensure_future(self._pump(up_reader, writer, pair, upstream=False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            self._tasks.difference_update(tasks)
            self._pairs.discard(pair)
            writer.close()
            up_writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: bool,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                writer.write_eof() if writer.can_write_eof() else writer.close()
                return
            if self.delay:
                await asyncio.sleep(self.delay)
            await self._open.wait()
            if upstream and self._reset_at is not None:
                room = self._reset_at - self.forwarded
                if room < len(data):
                    if room > 0:
                        writer.write(data[:room])
                        self.forwarded += room
                        await writer.drain()
                    self._reset_at = None
                    self.resets += 1
                    for w in pair:
                        _abort(w)
                    return
            writer.write(data)
            if upstream:
                self.forwarded += len(data)
            await writer.drain()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with an RST, not a FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
