"""A service as an object, run by ``ackbus run module:app`` (docs/running.md).

An :class:`App` holds what a service's ``main`` used to spell out: the endpoint's
options, its handlers, and hooks for the app's own resources (a database pool). The
runner (:func:`main`, behind ``ackbus run`` and ``python -m ackbus.run``) builds the
endpoint from the app and from flags and ``ACKBUS_*`` environment variables, starts it,
and on SIGTERM or SIGINT drains it (:meth:`~ackbus.endpoint.Endpoint.drain`): no new
messages, the running handlers finish within ``--grace`` and are acked, BYE, exit 0::

    app = App("table", hubs="tcp://127.0.0.1:5555")

    @app.lifespan
    async def resources(app: App) -> AsyncIterator[None]:
        app.state.db = await open_pool()
        app.register(Table(app.state.db, TableEvents(app.endpoint)))
        yield
        await app.state.db.close()

Settings, strongest first: a flag, an environment variable, the app's own argument,
the default.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import inspect
import logging
import os
import signal
import sys
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

from ._settings import (
    DEFAULT_GRACE,
    ENV,
    Settings,
    SettingsError,
    add_arguments,
    settings,
)
from ._types import Handler
from .endpoint import Endpoint
from .errors import AckbusError

__all__ = ["App", "Settings", "main", "run_app", "run_command"]

log = logging.getLogger("ackbus.run")

Hook = Callable[["App"], Awaitable[None]]
Lifespan = Callable[["App"], AbstractAsyncContextManager[None]]


class App:
    """A service: endpoint options, handlers and lifespan hooks, for ``ackbus run``.

    ``service``, ``hubs``, ``store``, ``instance``, ``keys``, ``hub_key``,
    ``max_concurrency``, ``heartbeat`` and ``grace`` are defaults that flags and
    ``ACKBUS_*`` variables override; any other keyword goes to
    :class:`~ackbus.endpoint.Endpoint` as it is (``registry=``, ``policy=``,
    ``workers=`` ...). Handlers are registered as on an endpoint (:meth:`register`,
    :meth:`register_handler`), before the run or from a startup hook, where
    :attr:`endpoint` exists (to send from a handler) and :attr:`state` holds what the
    hooks opened. ``lifespan`` (or the :meth:`lifespan` decorator) is an async context
    manager factory taking the app (an async generator function is wrapped as
    :func:`contextlib.asynccontextmanager` does), entered before the endpoint starts and
    left after it drained;
    :meth:`on_startup` and :meth:`on_shutdown` hooks run inside it, in order and in
    reverse order.
    """

    def __init__(
        self,
        service: str | None = None,
        *,
        hubs: str | Sequence[str] | None = None,
        store: str | None = None,
        instance: str | None = None,
        keys: str | None = None,
        hub_key: str | None = None,
        max_concurrency: int | None = None,
        heartbeat: float | None = None,
        grace: float = DEFAULT_GRACE,
        lifespan: Lifespan | Callable[[App], AsyncIterator[None]] | None = None,
        **endpoint_options: Any,
    ) -> None:
        self.defaults: dict[str, Any] = {
            "service": service,
            "hubs": [hubs] if isinstance(hubs, str) else list(hubs or ()),
            "store": store,
            "instance": instance,
            "keys": keys,
            "hub_key": hub_key,
            "max_concurrency": max_concurrency,
            "heartbeat": heartbeat,
            "grace": grace,
        }
        self.endpoint_options = endpoint_options
        self.state = types.SimpleNamespace()
        """What the hooks open (``app.state.db = ...``), for the handlers."""
        self._lifespans: list[Lifespan] = []
        if inspect.isasyncgenfunction(lifespan):  # a bare async generator function
            self._lifespans.append(contextlib.asynccontextmanager(lifespan))
        elif lifespan is not None:
            self._lifespans.append(cast(Lifespan, lifespan))
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._registrations: list[Callable[[Endpoint], None]] = []
        self._endpoint: Endpoint | None = None

    # ------------------------------------------------------------------ declaring

    def register(self, handler: Handler) -> None:
        """Register a generated handler object (as :meth:`Endpoint.register`)."""
        self._add(lambda ep: ep.register(handler))

    def register_handler(self, msg_type: Any, fn: Any, **options: Any) -> None:
        """Register a function for a message class or type name (as
        :meth:`Endpoint.register_handler`, with the same keywords)."""
        self._add(lambda ep: ep.register_handler(msg_type, fn, **options))

    def _add(self, registration: Callable[[Endpoint], None]) -> None:
        if self._endpoint is not None:  # from a hook: on this run's endpoint only
            registration(self._endpoint)
        else:
            self._registrations.append(registration)

    def lifespan(self, fn: Callable[[App], AsyncIterator[None]]) -> Callable[[App], Any]:
        """Decorate an async generator ``fn(app)``: the code before its ``yield`` runs
        before the endpoint starts, the code after once it drained (as
        :func:`contextlib.asynccontextmanager`). Several run nested, first outermost."""
        self._lifespans.append(contextlib.asynccontextmanager(fn))
        return fn

    def on_startup(self, fn: Hook) -> Hook:
        """Decorate ``async def fn(app)``, run before the endpoint starts."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Decorate ``async def fn(app)``, run after the endpoint drained."""
        self._shutdown.append(fn)
        return fn

    @property
    def endpoint(self) -> Endpoint:
        """The running endpoint (from the first hook on; :class:`RuntimeError` before)."""
        if self._endpoint is None:
            raise RuntimeError("the app's endpoint exists only while it runs (ackbus run)")
        return self._endpoint

    # ------------------------------------------------------------------ running

    @contextlib.asynccontextmanager
    async def running(self, config: Settings) -> AsyncIterator[Endpoint]:
        """The endpoint built from ``config``, its hooks entered and it started, for the
        block; then drained within ``config.grace`` (see :meth:`Endpoint.drain`) and the
        hooks left. What ``ackbus run`` does, for a test or an embedding program."""
        options = dict(self.endpoint_options)
        for name in ("instance", "store", "keys", "hub_key", "max_concurrency", "heartbeat"):
            value = getattr(config, name)
            if value is not None:
                options[name] = value
        ep = Endpoint(config.service, config.hubs, **options)
        self._endpoint = ep
        try:
            for registration in self._registrations:
                registration(ep)
            async with contextlib.AsyncExitStack() as stack:
                for lifespan in self._lifespans:
                    await stack.enter_async_context(lifespan(self))
                for hook in self._startup:
                    await hook(self)
                try:
                    await ep.start()
                    yield ep
                finally:
                    await ep.drain(config.grace)
                    for hook in reversed(self._shutdown):
                        await hook(self)
        finally:
            await ep.close()
            self._endpoint = None

    def run(self, argv: Sequence[str] | None = None) -> int:
        """Run this app as ``ackbus run`` would, with ``argv`` (default:
        ``sys.argv[1:]``) as its flags: for ``if __name__ == "__main__":
        sys.exit(app.run())``."""
        parser = argparse.ArgumentParser(description="Run this ackbus service.")
        add_arguments(parser, target=False)
        return run_app(self, parser.parse_args(argv))


def load(target: str, app_dir: str = ".") -> App:
    """The :class:`App` named by ``module:attribute`` (attribute default ``app``)."""
    module_name, _, attr = target.partition(":")
    if app_dir:
        sys.path.insert(0, os.path.abspath(app_dir))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise SettingsError(
                f"no module {module_name!r} (looked in {os.path.abspath(app_dir)} and the "
                "import path; --app-dir names another folder)"
            ) from None
        raise
    found = getattr(module, attr or "app", None)
    if not isinstance(found, App):
        what = "nothing" if found is None else type(found).__name__
        raise SettingsError(f"{module_name}:{attr or 'app'} is {what}, not an ackbus.App")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``ackbus run MODULE:APP [flags]`` (``python -m ackbus.run``)."""
    parser = argparse.ArgumentParser(
        prog="ackbus run", description="Run the ackbus service an App declares."
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """``ackbus run`` with its parsed flags: load the app, then :func:`run_app`."""
    try:
        app = load(args.app, args.app_dir)
    except SettingsError as err:
        print(f"ackbus run: error: {err}", file=sys.stderr)
        return 2
    return run_app(app, args)


def run_app(app: App, args: argparse.Namespace) -> int:
    """Run ``app`` with the flags in ``args`` until SIGTERM or SIGINT; the exit status."""
    level = args.log_level or os.environ.get(ENV["log_level"]) or "INFO"
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        config = settings(app.defaults, args)
    except SettingsError as err:
        print(f"ackbus run: error: {err}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(app, config))
    except (AckbusError, OSError) as err:
        # no hub answered (ConnectTimeout says what to check), a store that cannot open,
        # a key file missing: one line, no traceback
        print(f"ackbus run: error: {err}", file=sys.stderr)
        return 1


async def _serve(app: App, config: Settings) -> int:
    """Run until the first signal, drain, and return 0; a second signal cuts the
    grace period short."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    hurry = asyncio.Event()

    def on_signal(name: str) -> None:
        if stop.is_set():
            log.warning("%s again: stopping without waiting for running handlers", name)
            hurry.set()
        else:
            log.info("%s: draining (grace %g s)", name, config.grace)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    try:
        async with app.running(config) as ep:
            where = " ".join(config.hubs)
            store = f"; store {config.store}" if config.store else ""
            print(f"ackbus run: {ep.identity} ready on {where}{store}", flush=True)
            await stop.wait()
            began = time.monotonic()
            running = ep.running
            drain = asyncio.ensure_future(ep.drain(config.grace))
            hurried = asyncio.ensure_future(hurry.wait())
            await asyncio.wait((drain, hurried), return_when=asyncio.FIRST_COMPLETED)
            hurried.cancel()
            if not drain.done():
                drain.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await drain
                await ep.close(timeout=0)
                finished = False
            else:
                finished = drain.result()
            stats = ep.stats
            outcome = (
                "every running handler finished and was acked"
                if finished
                else "handlers still running were cancelled (their senders retry them elsewhere)"
            )
            print(
                f"ackbus run: {ep.identity} stopped in {time.monotonic() - began:.2f} s: "
                f"{outcome}; running at the signal: {running}, handled {stats.handled}, "
                f"sent {stats.sent}",
                flush=True,
            )
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0
