"""The core is sans-IO: it imports neither zmq nor asyncio, and reads no clock.

What the core's sources import, directly or through other ackbus modules (relative and
function-level imports included), is checked in tests/test_layers.py."""

import pathlib
import subprocess
import sys

import ackbus
import ackbus.core
from ackbus import envelope_pb2
from ackbus.core import Outcome

CORE = pathlib.Path(ackbus.core.__file__).parent

# Import ackbus.core in a fresh interpreter *without* running ackbus/__init__.py (which pulls
# in the whole runtime, endpoint and transport included), then list what got imported.
_PROBE = f"""
import sys, types
pkg = types.ModuleType("ackbus")
pkg.__path__ = [{str(CORE.parent)!r}]
sys.modules["ackbus"] = pkg
import ackbus.core
print("\\n".join(sorted(sys.modules)))
"""


def test_importing_core_loads_no_io_module() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    loaded = {name.split(".")[0] for name in out}
    assert "ackbus" in loaded
    assert not loaded & {"asyncio", "zmq", "google"}, loaded & {"asyncio", "zmq", "google"}


def test_outcome_mirrors_the_wire_enum() -> None:
    wire = dict(envelope_pb2.Outcome.items())
    mine = {
        ("OUTCOME_UNSPECIFIED" if o is Outcome.UNSPECIFIED else o.name): o.value for o in Outcome
    }
    assert mine == wire


def test_all_is_complete_and_resolves() -> None:
    public = {
        name
        for name, value in vars(ackbus.core).items()
        if not name.startswith("_") and not isinstance(value, type(ackbus))
    }
    assert public <= set(ackbus.core.__all__), public - set(ackbus.core.__all__)
    assert all(hasattr(ackbus.core, name) for name in ackbus.core.__all__)
