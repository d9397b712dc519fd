"""Schema drift at run time, with a real hub and real endpoints (in-memory and ipc).

Two builds of the same ``bank.Deposit`` (``amount_cents`` a uint64 in the old one, a
string in the new one), each in a descriptor pool of its own as two separately
generated programs have them:

* two live instances of ``bank`` handling the two versions: the hub logs the drift
  once, naming both instances, the type and both fingerprints, and counts it
  (``hub.stats``, ``ackbus status``'s totals, the Prometheus collector) however often
  they say HELLO again;
* a new sender and an old receiver: the receiver logs the mismatch once per sender and
  type (the ``fp`` header), handlers do not see that header, and a sender that agrees
  is not logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import helpers
import pytest
from ackbus import Context
from ackbus._admin import _totals
from ackbus._fingerprint import fingerprint
from ackbus.endpoint import Endpoint
from ackbus.errors import Rejected
from ackbus.metrics import HubCollector
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as F
from google.protobuf.message import Message

FAST = helpers.FAST.with_(ack_timeout=0.5)


def deposit_class(amount_type: int, *, memo: bool = False) -> type[Message]:
    proto = descriptor_pb2.FileDescriptorProto(name="bank.proto", package="bank", syntax="proto3")
    msg = proto.message_type.add(name="Deposit")
    msg.field.add(name="account", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    msg.field.add(name="amount_cents", number=2, type=amount_type, label=F.LABEL_OPTIONAL)
    if memo:  # a field added: compatible
        msg.field.add(name="memo", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bank.Deposit"))


OLD = deposit_class(F.TYPE_UINT64)
NEW = deposit_class(F.TYPE_STRING)


@pytest.fixture(params=["memory", "ipc"])
async def bus(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[helpers.HubBus]:
    async with helpers.running_hub(request.param, tmp_path) as running:
        yield running


def endpoint(bus: helpers.HubBus, service: str, instance: str, **options: Any) -> Endpoint:
    return Endpoint(
        service,
        bus.address,
        instance=instance,
        backend=bus.backend,
        policy=FAST,
        heartbeat=helpers.HEARTBEAT,
        **options,
    )


def drift_lines(caplog: pytest.LogCaptureFixture, logger: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == logger and "schema drift" in r.getMessage()
    ]


async def ignore(msg: Any, ctx: Context) -> None:
    pass


async def test_two_live_instances_that_disagree_are_logged_once_and_counted(
    bus: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.hub")
    hub = bus.hub
    async with endpoint(bus, "bank", "old-1") as old, endpoint(bus, "bank", "new-1") as new:
        old.register_handler(OLD, ignore)
        new.register_handler(NEW, ignore)
        await helpers.eventually(lambda: hub.stats.schema_drift >= 1)
        # HELLO again (a type change says it to every hub): not news.
        old.register_handler(descriptor_pb2.FileDescriptorProto, ignore)  # another type
        registered = hub.stats.registered
        await helpers.eventually(lambda: hub.stats.registered > registered)
        assert hub.stats.schema_drift == 1
        lines = drift_lines(caplog, "ackbus.hub")
        assert len(lines) == 1, lines
        line = lines[0]
        assert "bank.Deposit" in line
        assert "bank/old-1" in line
        assert "bank/new-1" in line
        assert fingerprint(OLD.DESCRIPTOR).hex() in line
        assert fingerprint(NEW.DESCRIPTOR).hex() in line
        assert _totals(hub.stats)["schema_drift"] == 1  # `ackbus status`
        scraped = {m.name: m.samples[0].value for m in HubCollector(hub).collect() if m.samples}
        assert scraped["ackbus_hub_schema_drift"] == 1


async def test_instances_that_agree_are_not_drift(
    bus: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.hub")
    hub = bus.hub
    again = deposit_class(F.TYPE_UINT64)  # another pool, the same schema
    async with endpoint(bus, "bank", "a") as a, endpoint(bus, "bank", "b") as b:
        a.register_handler(OLD, ignore)
        registered = hub.stats.registered
        b.register_handler(again, ignore)
        await helpers.eventually(lambda: hub.stats.registered > registered)
        assert hub.stats.schema_drift == 0
    assert drift_lines(caplog, "ackbus.hub") == []


async def test_a_receiver_logs_a_sender_with_another_fingerprint_once(
    bus: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.endpoint")
    seen: list[tuple[str, dict[str, str]]] = []

    async def on_deposit(msg: Any, ctx: Context) -> None:
        seen.append((ctx.sender.instance, dict(ctx.headers)))

    async with (
        endpoint(bus, "bank", "old-1") as bank,
        endpoint(bus, "teller", "new-1") as new_teller,
        endpoint(bus, "teller", "old-2") as old_teller,
    ):
        registered = bus.hub.stats.registered
        bank.register_handler(OLD, on_deposit)
        await helpers.eventually(lambda: bus.hub.stats.registered > registered)
        for i in range(3):
            report = await new_teller.send(NEW(account=f"n{i}", amount_cents="12"), timeout=5)
            assert report, report.error
        report = await new_teller.send(NEW(account="h"), headers={"traceparent": "00-x"}, timeout=5)
        assert report, report.error
        for i in range(2):
            report = await old_teller.send(OLD(account=f"o{i}", amount_cents=5), timeout=5)
            assert report, report.error
    lines = drift_lines(caplog, "ackbus.endpoint")
    assert len(lines) == 1, lines
    assert "bank.Deposit" in lines[0]
    assert "teller/new-1" in lines[0]
    assert fingerprint(NEW.DESCRIPTOR).hex() in lines[0]
    assert fingerprint(OLD.DESCRIPTOR).hex() in lines[0]
    assert all("fp" not in headers for _, headers in seen)
    assert ("new-1", {"traceparent": "00-x"}) in seen


def history_of(cls: type[Message]) -> descriptor_pb2.FileDescriptorSet:
    """The descriptor set an earlier build of ``cls``'s schema had (as protoc writes it)."""
    out = descriptor_pb2.FileDescriptorSet()
    cls.DESCRIPTOR.file.CopyToProto(out.file.add())
    return out


async def test_a_receiver_holding_the_old_version_refuses_an_incompatible_message(
    bus: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    """The issue's case: the receiver was regenerated with amount_cents a string; an old
    sender still writes a uint64. Given the old descriptors, the receiver refuses its
    messages (permanent, with the break) instead of handling amount_cents = ''; a
    message of a compatible old version (another receiver: only a field added since)
    is handled."""
    caplog.set_level(logging.WARNING, logger="ackbus.endpoint")
    handled: list[str] = []

    async def on_deposit(msg: Any, ctx: Context) -> None:
        handled.append(msg.account)

    async with (
        endpoint(bus, "bank", "new-1", schema_history=history_of(OLD)) as bank,
        endpoint(bus, "teller", "old-1") as old_teller,
        endpoint(bus, "teller", "new-2") as new_teller,
    ):
        registered = bus.hub.stats.registered
        bank.register_handler(NEW, on_deposit)
        await helpers.eventually(lambda: bus.hub.stats.registered > registered)
        refused = [
            await old_teller.send(OLD(account=f"o{i}", amount_cents=5), timeout=5) for i in range(2)
        ]
        fine = await new_teller.send(NEW(account="n", amount_cents="5"), timeout=5)
    assert fine, fine.error
    assert handled == ["n"]
    for report in refused:
        assert not report
        error = report.error
        assert isinstance(error, Rejected), error
        assert error.permanent
        assert "FIELD_RETYPED bank.Deposit.amount_cents" in str(error)
        assert fingerprint(OLD.DESCRIPTOR).hex() in str(error)
    assert len(drift_lines(caplog, "ackbus.endpoint")) == 1


async def test_a_compatible_old_version_is_handled_and_only_logged(
    bus: helpers.HubBus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="ackbus.endpoint")
    newer = deposit_class(F.TYPE_UINT64, memo=True)
    handled: list[str] = []

    async def on_deposit(msg: Any, ctx: Context) -> None:
        handled.append(msg.account)

    async with (
        endpoint(bus, "bank", "new-1", schema_history=[history_of(OLD)]) as bank,
        endpoint(bus, "teller", "old-1") as old_teller,
    ):
        registered = bus.hub.stats.registered
        bank.register_handler(newer, on_deposit)
        await helpers.eventually(lambda: bus.hub.stats.registered > registered)
        report = await old_teller.send(OLD(account="o", amount_cents=5), timeout=5)
    assert report, report.error
    assert handled == ["o"]
    assert len(drift_lines(caplog, "ackbus.endpoint")) == 1
