"""The per-destination outgoing queue that turns many small sends into few multiparts.

Through a Python router the cost is per wake-up and per multipart, not per byte:
several messages coalesced into one multipart cost little more than one. So callers
never build multiparts for messages or acks; they add items to an :class:`Outbox`, and
the transport pops whole batches from it once per event-loop iteration.

Order: messages keep their order among themselves, and so do acks; a control
multipart (HELLO, HEARTBEAT, BYE, REFUSAL, ROUTED...) is a barrier: everything added
before it is sent before it. ``control(..., first=True)`` jumps the queue (a HELLO
after a reconnect must precede the messages that waited for the connection).

The outbox is sans-IO: it never drops anything and never blocks. :attr:`writable`
turns false at ``high_water`` queued entries (or while the transport reports the
socket full); callers are expected to wait for it, and nothing is lost if they don't.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from ..errors import LocalProtocolError
from ._codec import (
    _U32,
    ACK_FRAME,
    BODIES_FRAME,
    ID_SIZE,
    MAX_ACKS,
    MAX_BATCH,
    MAX_NAME,
    MESSAGE_FRAME,
    PACK_BELOW,
    group_frame,
    join_body,
    packed_group_head,
    skip_packed,
)
from ._control import full_acks_frame

Multipart = list[bytes]

_prefix = _U32.pack


class _Group:
    """A group of the MESSAGE batch being filled, already in its wire layout:
    ``parts`` is the group frame in pieces (two header bytes, set on closing, the peer,
    then each item's u32 length and bytes, or whole runs of them as received), so
    closing it is one join. A big item (``PACK_BELOW`` or more) is a group of its own
    with ``count`` 0 and the item alone in ``parts``: it travels as its own frame."""

    __slots__ = ("count", "parts", "peer")

    def __init__(self, peer: bytes, count: int, parts: list[bytes]) -> None:
        self.peer = peer
        self.count = count
        self.parts = parts

    def frames(self) -> tuple[bytes, ...]:
        if not self.count:  # the item, and its body frame if it has one
            return group_frame(1, self.peer), *self.parts
        self.parts[0] = packed_group_head(self.count, self.peer)
        return (b"".join(self.parts),)


class _AckGroup:
    __slots__ = ("full", "ok", "peer")

    def __init__(self, peer: bytes) -> None:
        self.peer = peer
        self.ok: list[bytes] = []  # pieces of the ids frame: an id, or ids back to back
        self.full: list[bytes] = []


class Outbox:
    """What waits to be sent to one destination, packed into MESSAGE and ACK batches
    of at most ``max_batch`` items and ``max_acks`` acks.

    ``on_ready`` is called when the outbox goes from empty to non-empty: the transport
    uses it to schedule one flush at the end of the current loop iteration.
    """

    __slots__ = (
        "_ack_count",
        "_acks",
        "_blocked",
        "_bodies",
        "_count",
        "_done",
        "_last",
        "_msg_count",
        "_msgs",
        "body_frames",
        "high_water",
        "max_acks",
        "max_batch",
        "on_ready",
        "zstd",
    )

    def __init__(
        self,
        *,
        high_water: int = 10_000,
        max_batch: int = MAX_BATCH,
        max_acks: int = MAX_ACKS,
        on_ready: Callable[[], None] | None = None,
    ) -> None:
        if not 1 <= max_batch <= MAX_BATCH or not 1 <= max_acks <= MAX_ACKS or high_water < 1:
            raise LocalProtocolError("outbox limits out of range")
        self.high_water = high_water
        self.max_batch = max_batch
        self.max_acks = max_acks
        self.on_ready = on_ready
        self._done: deque[tuple[Multipart, int]] = deque()  # (multipart, entries in it)
        self._msgs: list[_Group] = []  # the open MESSAGE batch
        self._msg_count = 0
        self._acks: list[_AckGroup] = []
        self._ack_count = 0
        self._count = 0  # entries queued (items, acks, control multiparts)
        self._blocked = False
        self._last = 0
        self._bodies = False  # the open MESSAGE batch carries a body frame
        self.body_frames = False
        """The destination takes bodies as frames of their own (it negotiated protocol
        version 3, ``BODY_VERSION``): else :meth:`message` joins a body to its item."""
        self.zstd = False
        """The destination decompresses zstandard bodies (it listed "zstd"): else the
        caller makes a compressed item plain first (``wire.plain_item``)."""

    # -------------------------------------------------------------- adding

    def limit_batch(self, max_batch: int) -> None:
        """Make MESSAGE batches of at most ``max_batch`` items from now on (what the peer
        said it accepts; 0 or more than ``MAX_BATCH``: ``MAX_BATCH``). Batches already
        closed keep their size."""
        self.max_batch = max_batch if 1 <= max_batch <= MAX_BATCH else MAX_BATCH
        if self._msg_count >= self.max_batch:
            self._close_messages()

    def _touch(self) -> None:
        if self._count == 0 and self.on_ready is not None:
            self.on_ready()

    def message(self, item: bytes, peer: bytes = b"", body: bytes | None = None) -> bool:
        """Queue one message item frame (from :func:`encode_message`, or as received
        when forwarding); ``peer`` is the group token. ``body``: the body of an item
        flagged ``FLAG_BODY_FRAME`` (any buffer), sent as the next frame as it is, or
        joined to the item for a destination that does not take body frames
        (:attr:`body_frames`). Returns :attr:`writable`."""
        if len(peer) > MAX_NAME:
            raise LocalProtocolError("peer token longer than 255 bytes")
        self._touch()
        msgs = self._msgs
        if body is not None and not self.body_frames:
            item = join_body(item, body)
            body = None
        if body is not None:
            msgs.append(_Group(peer, 0, [item, body]))
            self._bodies = True
        elif len(item) >= PACK_BELOW:
            msgs.append(_Group(peer, 0, [item]))
        elif msgs and msgs[-1].count and msgs[-1].peer == peer:
            group = msgs[-1]
            group.parts += (_prefix(len(item)), item)
            group.count += 1
        else:
            msgs.append(_Group(peer, 1, [b"", peer, _prefix(len(item)), item]))
        self._msg_count += 1
        self._count += 1
        if self._msg_count >= self.max_batch:
            self._close_messages()
        return self._count < self.high_water and not self._blocked

    def packed(self, chunk: bytes, count: int, peer: bytes = b"") -> bool:
        """Queue ``count`` message items that come laid out as a packed group carries
        them: each a u32 length and the item, every item under ``PACK_BELOW`` bytes (a
        hub forwarding a run of items it received packed: ``PackedRun.chunk()``). The
        chunk is not read again, so the caller vouches for it.

        The batches come out byte for byte as ``count`` calls of :meth:`message` with
        the items would make them: a chunk that does not fit in the open batch is cut
        at the item where that batch is full. Returns :attr:`writable`."""
        if len(peer) > MAX_NAME:
            raise LocalProtocolError("peer token longer than 255 bytes")
        if count < 1:
            raise LocalProtocolError("a packed chunk carries at least one item")
        self._touch()
        while True:
            room = self.max_batch - self._msg_count
            if count <= room:
                self._add_packed(chunk, count, peer)
                return self._count < self.high_water and not self._blocked
            cut = skip_packed(chunk, 0, room)
            self._add_packed(chunk[:cut], room, peer)  # fills the batch and closes it
            chunk = chunk[cut:]
            count -= room

    def _add_packed(self, chunk: bytes, count: int, peer: bytes) -> None:
        msgs = self._msgs
        if msgs and msgs[-1].count and msgs[-1].peer == peer:
            group = msgs[-1]
            group.parts.append(chunk)
            group.count += count
        else:
            msgs.append(_Group(peer, count, [b"", peer, chunk]))
        self._msg_count += count
        self._count += count
        if self._msg_count >= self.max_batch:
            self._close_messages()

    def ack(self, message_id: bytes, peer: bytes = b"") -> bool:
        """Queue a compact ack (outcome OK, no response) for ``message_id``."""
        if len(message_id) != ID_SIZE:
            raise LocalProtocolError("an acked message id must be 16 bytes")
        self._ack_group(peer).ok.append(message_id)
        return self._added_ack()

    def acks(self, message_ids: Sequence[bytes], peer: bytes = b"") -> bool:
        """Queue compact acks for several ids at once (a hub forwarding an ACK group):
        joined into one piece of the ids frame at once, cut where a batch is full."""
        ids = b"".join(message_ids)
        if len(ids) != ID_SIZE * len(message_ids):
            raise LocalProtocolError("an acked message id must be 16 bytes")
        left = len(message_ids)
        while left:
            take = min(left, self.max_acks - self._ack_count)
            if take < left:
                piece, ids = ids[: take * ID_SIZE], ids[take * ID_SIZE :]
            else:
                piece = ids
            self._ack_group(peer).ok.append(piece)
            self._ack_count += take - 1
            self._count += take - 1
            self._added_ack()
            left -= take
        return self._count < self.high_water and not self._blocked

    def full_ack(self, ack: bytes, peer: bytes = b"") -> bool:
        """Queue a serialized ``ackbus.Ack`` (any outcome other than plain OK)."""
        self._ack_group(peer).full.append(ack)
        return self._added_ack()

    def _ack_group(self, peer: bytes) -> _AckGroup:
        self._touch()
        for group in self._acks:  # few peers per destination: a scan beats a dict here
            if group.peer == peer:
                return group
        group = _AckGroup(peer)
        self._acks.append(group)
        return group

    def _added_ack(self) -> bool:
        self._ack_count += 1
        self._count += 1
        if self._ack_count >= self.max_acks:
            self._close_acks()
        return self._count < self.high_water and not self._blocked

    def control(self, frames: Multipart, *, first: bool = False) -> bool:
        """Queue a whole control multipart. It is a barrier: what was added before goes
        before it.

        ``first=True`` puts it ahead of everything still queued and makes it supersede
        any queued, unsent multipart of the same command: a HELLO said again on
        reconnect (or after a new handler was registered) replaces the one still
        waiting for the connection, so the hub gets one HELLO, the latest, not two in
        the wrong order."""
        if not frames:
            raise LocalProtocolError("empty multipart")
        self._touch()
        if first:
            head = frames[0]
            stale = [e for e in self._done if e[0][0] == head]
            for entry in stale:
                self._done.remove(entry)
                self._count -= entry[1]
            self._count += 1
            self._done.appendleft((frames, 1))
        else:
            self._count += 1
            self._close_messages()
            self._close_acks()
            self._done.append((frames, 1))
        return self._count < self.high_water and not self._blocked

    # -------------------------------------------------------------- packing

    def _close_messages(self) -> None:
        if not self._msgs:
            return
        out = [BODIES_FRAME if self._bodies else MESSAGE_FRAME]
        for group in self._msgs:
            out += group.frames()
        self._done.append((out, self._msg_count))
        self._msgs = []
        self._msg_count = 0
        self._bodies = False

    def _close_acks(self) -> None:
        if not self._acks:
            return
        out = [ACK_FRAME]
        for group in self._acks:
            out += (group.peer, b"".join(group.ok), full_acks_frame(group.full))
        self._done.append((out, self._ack_count))
        self._acks = []
        self._ack_count = 0

    def pop(self) -> Multipart | None:
        """The next multipart to send, or None when empty. Open batches are closed when
        reached, so what was queued in this loop iteration goes out packed."""
        if not self._done:
            self._close_messages()
            self._close_acks()
            if not self._done:
                return None
        frames, weight = self._done.popleft()
        self._count -= weight
        self._last = weight
        return frames

    def unpop(self, frames: Multipart) -> None:
        """Give back the multipart :meth:`pop` just returned, unsent (socket full)."""
        self._done.appendleft((frames, self._last))
        self._count += self._last

    # -------------------------------------------------------------- state

    @property
    def blocked(self) -> bool:
        """Set by the transport while the socket refuses more (high-water mark)."""
        return self._blocked

    @blocked.setter
    def blocked(self, value: bool) -> None:
        self._blocked = value

    @property
    def writable(self) -> bool:
        """False while the socket is full or ``high_water`` entries wait."""
        return self._count < self.high_water and not self._blocked

    def __len__(self) -> int:
        """Queued entries: each message, ack and control multipart counts one."""
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0
