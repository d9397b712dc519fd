"""A pre-ackbus table service in plain pyzmq: it imports nothing of ackbus.

It speaks the legacy JSON envelope (PascalCase, one frame) on four sockets:

* PULL (bound, ``--pull``): takes ``StartHand`` commands. For each it publishes a
  ``HandStarted`` event on its PUB and pushes a ``PlayerAction`` command (twice, with
  the same MessageId, as a careless legacy retry would) to ``--push``. For table
  ``garbage`` it first publishes malformed frames of several kinds.
* PUB (bound, ``--pub``): the events above.
* REP (bound, ``--rep``): answers ``ServiceRegistration`` with ``RegistrationResult``;
  the first request of a service named ``slow`` is answered only after ``--slow`` s.
* PUSH (connects to ``--push``): the commands above.

Every message it receives is appended as a JSON line to ``--log``. It prints
``ready`` once its sockets are bound and runs until killed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
import uuid

import zmq


def envelope(type_name: str, payload: dict[str, object], message_id: str = "") -> bytes:
    return json.dumps(
        {
            "MessageId": message_id or str(uuid.uuid4()),
            "Type": type_name,
            "SenderId": "legacy-table",
            "Timestamp": datetime.datetime.now(datetime.UTC).isoformat(),
            "Payload": payload,
        }
    ).encode()


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--pull", "--pub", "--rep"):
        parser.add_argument(name, type=int, required=True)
    parser.add_argument("--push", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--slow", type=float, default=1.0)
    args = parser.parse_args()

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{args.pull}")
    pub = ctx.socket(zmq.PUB)
    pub.bind(f"tcp://127.0.0.1:{args.pub}")
    rep = ctx.socket(zmq.REP)
    rep.bind(f"tcp://127.0.0.1:{args.rep}")
    push = ctx.socket(zmq.PUSH)
    push.connect(args.push)
    for sock in (pull, pub, rep, push):
        sock.linger = 0
    log = open(args.log, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
    hands: dict[str, int] = {}
    slow_seen: set[str] = set()
    print("ready", flush=True)

    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(rep, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll(1000):
            raw = sock.recv()
            env = json.loads(raw)
            log.write(json.dumps({"socket": "pull" if sock is pull else "rep", **env}) + "\n")
            payload = env["Payload"]
            if sock is pull and env["Type"] == "StartHand":
                table = payload.get("TableId", "")
                if table == "garbage":
                    pub.send(b"this is not json")
                    pub.send(envelope("NoSuchType", {"X": 1}))
                    pub.send(envelope("HandStarted", {"HandNumber": "many"}))
                    pub.send_multipart([b"a", b"b", b"c"])
                hands[table] = hands.get(table, 0) + 1
                pub.send(
                    envelope(
                        "HandStarted",
                        {"TableId": table, "HandNumber": hands[table], "PlayerIds": ["ann", "bob"]},
                    )
                )
                action = envelope(
                    "PlayerAction", {"TableId": table, "From": "bob", "Kind": "RAISE", "Chips": 40}
                )
                push.send(action)
                push.send(action)  # the same MessageId again: the bridge must drop it
            elif sock is rep:
                name = payload.get("ServiceName", "")
                if name == "slow" and env["MessageId"] not in slow_seen:
                    slow_seen.add(env["MessageId"])
                    time.sleep(args.slow)
                reply = {"Accepted": name != "banned", "TableIds": ["t1", "t2"]}
                if name == "banned":
                    reply["Reason"] = "banned"
                rep.send(envelope("poker.RegistrationResult", reply))


if __name__ == "__main__":
    sys.exit(main())
