"""The package's public surface: ``__all__`` is complete and every name in it exists;
``Endpoint``, ``Hub`` and ``BlockingEndpoint`` are imported on first use."""

import importlib
import subprocess
import sys

import ackbus
import pytest


def test_all_names_exist() -> None:
    missing = [name for name in ackbus.__all__ if not hasattr(ackbus, name)]
    assert missing == []


def test_all_is_complete() -> None:
    public = {
        name
        for name, value in vars(ackbus).items()
        if not name.startswith("_") and not isinstance(value, type(ackbus))
    }
    assert public <= set(ackbus.__all__), public - set(ackbus.__all__)


def test_all_is_sorted_and_unique() -> None:
    assert len(set(ackbus.__all__)) == len(ackbus.__all__)


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("Endpoint", "ackbus.endpoint"),
        ("EndpointStats", "ackbus.endpoint"),
        ("Hub", "ackbus.hub"),
        ("HubStats", "ackbus.hub"),
        ("BlockingEndpoint", "ackbus.blocking"),
    ],
)
def test_lazy_names_are_the_classes_of_their_modules(name: str, module: str) -> None:
    value = getattr(importlib.import_module(module), name)
    assert getattr(ackbus, name) is value
    assert name in ackbus.__all__
    assert name in dir(ackbus)


def test_the_public_classes_import_from_the_package() -> None:
    from ackbus import BlockingEndpoint, Endpoint, Hub
    from ackbus.blocking import BlockingEndpoint as OldBlockingEndpoint
    from ackbus.endpoint import Endpoint as OldEndpoint
    from ackbus.hub import Hub as OldHub

    assert (Endpoint, Hub, BlockingEndpoint) == (OldEndpoint, OldHub, OldBlockingEndpoint)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Endpointt'"):
        _ = ackbus.Endpointt  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        from ackbus import Endpointt  # type: ignore[attr-defined]  # noqa: F401


def test_import_ackbus_leaves_the_endpoint_the_hub_and_zmq_unimported() -> None:
    """Every generated module imports ackbus: that must stay cheap."""
    heavy = ["ackbus.endpoint", "ackbus.hub", "ackbus.blocking", "zmq"]
    code = f"import sys, ackbus; print([m for m in {heavy!r} if m in sys.modules])"
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == "[]"
