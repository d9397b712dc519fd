"""The settings of ``ackbus run`` (flags, ``ACKBUS_*`` variables, the app's own), kept
apart from :mod:`ackbus.app` so that ``ackbus --help`` builds its parser without
importing the endpoint."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_GRACE", "ENV", "Settings", "SettingsError", "add_arguments", "settings"]

DEFAULT_GRACE = 30.0
"""Seconds a stopping service gives its running handlers (``--grace``, ``ACKBUS_GRACE``)."""

ENV = {
    "service": "ACKBUS_SERVICE",
    "hubs": "ACKBUS_HUBS",
    "store": "ACKBUS_STORE",
    "instance": "ACKBUS_INSTANCE",
    "keys": "ACKBUS_KEYS",
    "hub_key": "ACKBUS_HUB_KEY",
    "max_concurrency": "ACKBUS_MAX_CONCURRENCY",
    "heartbeat": "ACKBUS_HEARTBEAT",
    "grace": "ACKBUS_GRACE",
    "log_level": "ACKBUS_LOG_LEVEL",
}
"""Each setting's environment variable (a flag overrides it; it overrides the app)."""


@dataclass(frozen=True)
class Settings:
    """What a run uses, resolved from flags, environment and the app (:func:`settings`)."""

    service: str
    hubs: tuple[str, ...]
    store: str | None = None
    instance: str | None = None
    keys: str | None = None
    hub_key: str | None = None
    max_concurrency: int | None = None
    heartbeat: float | None = None
    grace: float = DEFAULT_GRACE


class SettingsError(ValueError):
    """A setting missing or malformed: the runner prints it and exits 2."""


def settings(
    defaults: dict[str, Any],
    flags: argparse.Namespace | None = None,
    env: dict[str, str] | None = None,
) -> Settings:
    """Resolve each setting: the flag if given, else its ``ACKBUS_*`` variable (in
    ``env``, default ``os.environ``), else the app's argument (``defaults``: an
    :class:`~ackbus.app.App`'s ``defaults``), else the default."""
    env = dict(os.environ) if env is None else env
    got: dict[str, Any] = {}
    for name, var in ENV.items():
        if name == "log_level":
            continue
        flag = getattr(flags, name, None) if flags is not None else None
        raw = env.get(var, "").strip()
        if flag not in (None, []):
            got[name] = flag
        elif raw:
            got[name] = _parse(name, var, raw)
        else:
            got[name] = defaults.get(name)
    if not got["service"]:
        raise SettingsError(f"no service name: give --service, {ENV['service']} or App(service)")
    hubs = tuple(got["hubs"] or ())
    if not hubs:
        raise SettingsError(f"no hub address: give --hub, {ENV['hubs']} or App(hubs=)")
    grace = float(got["grace"])
    if grace < 0:
        raise SettingsError(f"the grace period must be >= 0 seconds, got {grace}")
    return Settings(
        service=got["service"],
        hubs=hubs,
        store=got["store"] or None,
        instance=got["instance"] or None,
        keys=got["keys"] or None,
        hub_key=got["hub_key"] or None,
        max_concurrency=got["max_concurrency"],
        heartbeat=got["heartbeat"],
        grace=grace,
    )


def _parse(name: str, var: str, raw: str) -> Any:
    try:
        if name == "hubs":
            return [h for h in raw.replace(",", " ").split() if h]
        if name == "max_concurrency":
            return int(raw)
        if name in ("heartbeat", "grace"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{var}={raw!r} is not a number") from None
    return raw


def add_arguments(parser: argparse.ArgumentParser, *, target: bool = True) -> None:
    """The flags of ``ackbus run`` (``target``: with the ``module:app`` argument)."""
    if target:
        parser.add_argument(
            "app",
            metavar="MODULE:APP",
            help="the App to run: a module to import and its attribute (default attribute: app)",
        )
        parser.add_argument(
            "--app-dir",
            default=".",
            metavar="DIR",
            help="folder put first on the import path (default: the current one)",
        )
    parser.add_argument("--service", help=f"service name ({ENV['service']})")
    parser.add_argument(
        "--hub",
        dest="hubs",
        action="append",
        metavar="ADDRESS",
        help=f"a hub to connect to, repeatable ({ENV['hubs']}: comma- or space-separated)",
    )
    parser.add_argument(
        "--store", help=f"a durable store: sqlite:///path.db or postgresql://... ({ENV['store']})"
    )
    parser.add_argument("--instance", help=f"this instance's id ({ENV['instance']})")
    parser.add_argument(
        "--keys", metavar="FILE", help=f"this endpoint's NAME.key_secret ({ENV['keys']})"
    )
    parser.add_argument("--hub-key", metavar="FILE", help=f"the hub's hub.key ({ENV['hub_key']})")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        metavar="N",
        help=f"messages handled at once ({ENV['max_concurrency']})",
    )
    parser.add_argument(
        "--heartbeat", type=float, metavar="S", help=f"heartbeat interval ({ENV['heartbeat']})"
    )
    parser.add_argument(
        "--grace",
        type=float,
        metavar="S",
        help=(
            "on SIGTERM/SIGINT, seconds for running handlers to finish before they are "
            f"cancelled (default {DEFAULT_GRACE:g}; {ENV['grace']})"
        ),
    )
    parser.add_argument(
        "--log-level", help=f"Python logging level (default INFO; {ENV['log_level']})"
    )
