"""Running the ASGI apps under uvicorn with one graceful shutdown for all of them.

On the first SIGTERM or SIGINT the server drains:

1. ``on_stop`` runs: the model registry refuses new requests (503 ``shutting_down``) and
   ``/health`` turns 503, so a load balancer stops sending work;
2. after ``drain_delay`` seconds (0 by default), every uvicorn server stops listening (new
   connections are refused) and closes its idle keep-alive connections. The delay is for a load
   balancer: until its health checks see the 503, it may still open connections, and one that
   reaches the server as the listener closes ends without an answer, which a proxy cannot safely
   retry (HAProxy closes the client's connection). During the delay new requests get the
   retryable 503 instead;
3. requests in flight get ``grace`` seconds to finish, counted from the signal;
4. then ``on_abort`` runs (the models shut down): whatever still generates ends with an error
   event and ``[DONE]`` (streams) or a 503 (whole responses), and those answers are written;
5. uvicorn runs the apps' lifespan exits (closing what they opened: this is where a response
   store is flushed and closed) and the process exits with status 0.

A second signal skips the rest of the delay and of the grace period. Connections that are not
generating (an idle MCP event stream, say) are closed ``FLUSH_S`` seconds after the grace period
at the latest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

import uvicorn

log = logging.getLogger("infermcp.http")

FLUSH_S = 5.0  # after the grace period: time to write the error events, then connections close


class _Server(uvicorn.Server):
    """uvicorn's server with its signal handling left to :class:`GracefulServers`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class GracefulServers:
    """Serves several uvicorn configs in one event loop and drains them together on a signal."""

    def __init__(self, configs: list[uvicorn.Config], grace: float, on_stop: Callable[[], None],
                 on_abort: Callable[[], None], drain_delay: float = 0) -> None:
        for config in configs:
            config.timeout_graceful_shutdown = int(grace + FLUSH_S + 0.999)
        self.servers = [_Server(config) for config in configs]
        self.grace = grace
        self.drain_delay = drain_delay
        self._on_stop = on_stop
        self._on_abort = on_abort
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self.num_signals = 0

    def stop(self) -> None:
        """Begin draining (what the first signal does); a second call ends the grace period."""
        if self._stopping.is_set():
            self._hurry.set()
            self._close()
            return
        log.info("shutting down: refusing new requests, %g s for those in flight; listening "
                 "for %g s more", self.grace, self.drain_delay)
        self._on_stop()
        self._stopping.set()
        if self.drain_delay > 0:
            asyncio.get_running_loop().call_later(self.drain_delay, self._close)
        else:
            self._close()

    def _close(self) -> None:
        """Stop listening and close idle connections (uvicorn's shutdown)."""
        for server in self.servers:
            server.should_exit = True

    def _on_signal(self, sig: signal.Signals) -> None:
        self.num_signals += 1
        log.info("received %s", sig.name)
        self.stop()

    async def serve(self) -> None:
        """Run every server until all have shut down."""
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
        watcher = asyncio.ensure_future(self._abort_after_grace())
        try:
            await asyncio.gather(*(server.serve() for server in self.servers))
        finally:
            watcher.cancel()
            for sig in signals:
                loop.remove_signal_handler(sig)

    async def _abort_after_grace(self) -> None:
        await self._stopping.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._hurry.wait(), timeout=self.grace)
        busy = sum(len(server.server_state.connections) for server in self.servers)
        if busy:
            log.warning("grace period over: aborting what still runs on %d connection(s)", busy)
        await asyncio.to_thread(self._on_abort)
