"""A small python-osc client for the engine: send messages, print the replies and feedback.

    python examples/osc_client.py /riff/prompt "dub techno chords"
    python examples/osc_client.py /riff/alpha 0.5 --host 127.0.0.1 --port 9000
    python examples/osc_client.py /riff/state            # prints every parameter
    python examples/osc_client.py --watch                # subscribe and print feedback
    python examples/osc_client.py /riff/ping             # prints /riff/pong

Arguments that look like integers or floats are sent as such, everything else as strings;
``-s``/``--string`` sends every argument as a string (``-s /riff/prompt 808``).
Replies (``/riff/error``, ``/riff/pong``, state) come back to this client's own port.
"""

from __future__ import annotations

import argparse
import socket
import sys

from pythonosc.osc_message_builder import OscMessageBuilder
from pythonosc.osc_packet import OscPacket


def parse_arg(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def build(address: str, args: list[int | float | str]) -> bytes:
    builder = OscMessageBuilder(address)
    for arg in args:
        builder.add_arg(arg)
    return builder.build().dgram


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address", nargs="?", help="OSC address, e.g. /riff/alpha")
    parser.add_argument("args", nargs="*", help="arguments")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("-s", "--string", action="store_true",
                        help="send every argument as a string, even one that looks like a number")
    parser.add_argument("--watch", action="store_true", help="subscribe and print feedback")
    parser.add_argument("--timeout", type=float, default=2.0)
    opts = parser.parse_args()
    if not opts.address and not opts.watch:
        parser.error("give an address or --watch")
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 0))
    sock.settimeout(None if opts.watch else opts.timeout)
    server = (opts.host, opts.port)
    args: list[int | float | str] = (list(opts.args) if opts.string
                                     else [parse_arg(a) for a in opts.args])
    is_ping = opts.address == "/riff/ping" and not args
    if opts.address:
        sock.sendto(build(opts.address, args), server)
    if opts.watch:
        sock.sendto(build("/riff/subscribe", []), server)
    elif not is_ping:
        sock.sendto(build("/riff/ping", []), server)  # the pong marks the end of the replies
    status = 0
    try:
        while True:
            data, _ = sock.recvfrom(65536)
            for timed in OscPacket(data).messages:
                msg = timed.message
                if msg.address == "/riff/pong" and not opts.watch:
                    if is_ping:
                        print(msg.address)
                    return status
                if msg.address == "/riff/error":
                    status = 1
                print(msg.address, *msg.params)
    except TimeoutError:
        print("no answer from the engine (is it running?)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        sock.sendto(build("/riff/unsubscribe", []), server)
        return 0


if __name__ == "__main__":
    sys.exit(main())
