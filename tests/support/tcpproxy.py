"""A loopback TCP proxy a test controls: cut it to make a server (e.g. PostgreSQL) unreachable, then restore it.

proxy = TcpProxy(("127.0.0.1", 5432))       # listen on 127.0.0.1:proxy.port, forward to the target
proxy.cut()                                 # close every connection; refuse new ones
proxy.restore()                             # accept again
proxy.close()

TcpProxy(target, listen_host="10.1.2.1")    # listen on another local address (a veth's, tests/support/netns.py)
"""

from __future__ import annotations

import socket
import threading
from contextlib import suppress


class TcpProxy:
    """A loopback TCP proxy that can be cut (refusing and closing connections) and restored."""

    def __init__(self, target: tuple[str, int], *, listen_host: str = "127.0.0.1") -> None:
        self.target = target
        self.listener = socket.create_server((listen_host, 0))
        self.port = self.listener.getsockname()[1]
        self.up = True
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=3)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self._lock:
            for s in self._sockets:
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self._sockets.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()
