"""The zguide's weather update server (zguide chapter 1, ``wuserver.py``), in plain
pyzmq: it imports nothing of ackbus and publishes ``"ZIPCODE TEMPERATURE HUMIDITY"``
text frames on a PUB socket, as the book's server does.

Three changes for a test machine, none to the format: it binds ``--port`` on 127.0.0.1
(the book binds ``tcp://*:5556``), draws zip codes from ``--zip-from``..``--zip-to``
(the book: 1..100000, where its client's 10001 comes up once in 100,000), and pauses
1 ms every 100 updates (the book's loop runs flat out). It prints ``ready`` once bound.
"""

from __future__ import annotations

import argparse
import time
from random import randrange

import zmq


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--zip-from", type=int, default=1)
    parser.add_argument("--zip-to", type=int, default=100000)
    args = parser.parse_args()

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    socket.bind(f"tcp://127.0.0.1:{args.port}")
    print("ready", flush=True)

    sent = 0
    while True:
        zipcode = randrange(args.zip_from, args.zip_to)
        temperature = randrange(-80, 135)
        relhumidity = randrange(10, 60)
        socket.send_string(f"{zipcode} {temperature} {relhumidity}")
        sent += 1
        if sent % 100 == 0:
            time.sleep(0.001)


if __name__ == "__main__":
    main()
