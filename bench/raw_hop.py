"""The least a Python HTTP hop can be, for bench/upstream_overhead.py's rawhop setup.

    python bench/raw_hop.py PORT UPSTREAM_HOST UPSTREAM_PORT

A thread per client connection, blocking sockets, one kept-alive upstream connection per client
connection, each request and answer forwarded as its bytes (Content-Length framing only, no
parser, no WSGI): what a Python proxy cannot go below on this machine, to set beside nginx's hop
and the product's worker. Not a server to run anywhere else: no timeouts, no chunked bodies.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any


def read_message(sock: socket.socket, buffered: bytes) -> tuple[bytes | None, bytes]:
    """One whole HTTP/1.1 message (head and Content-Length body) and the bytes read past it."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        buffered += chunk
    head, _, rest = buffered.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None, b""
        rest += chunk
    return head + b"\r\n\r\n" + rest[:length], rest[length:]


def forward(client: socket.socket, upstream_address: tuple[str, int]) -> None:
    with contextlib.suppress(OSError), client, socket.create_connection(upstream_address) as upstream:
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        from_client = from_upstream = b""
        while True:
            request, from_client = read_message(client, from_client)
            if request is None:
                return
            upstream.sendall(request)
            answer, from_upstream = read_message(upstream, from_upstream)
            if answer is None:
                return
            client.sendall(answer)


def serve_forever(port: int, handle: Callable[[socket.socket, Any], None]) -> None:
    """Listen on 127.0.0.1:port and run handle(client, address) on a thread of its own per connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    while True:
        client, address = listener.accept()
        threading.Thread(target=handle, args=(client, address), daemon=True).start()


def main() -> None:
    port, upstream_address = int(sys.argv[1]), (sys.argv[2], int(sys.argv[3]))
    serve_forever(port, lambda client, _address: forward(client, upstream_address))


if __name__ == "__main__":
    main()
