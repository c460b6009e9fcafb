"""Fault injection for tests and the fleet benchmark: a loopback proxy that cuts downloads.

Devices pointed at the proxy reach the real server, but every connection is closed after it has
carried ``cut_after`` bytes back to the device, so a bundle download breaks part-way and must
resume with an HTTP range request. Nothing in the client knows about it.
"""

from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["CuttingProxy"]


class CuttingProxy:
    """Forward 127.0.0.1:port to the server, closing each connection after ``cut_after`` bytes
    of response. ``cuts`` counts the connections it broke."""

    def __init__(self, server_port: int, cut_after: int) -> None:
        self.server_port, self.cut_after = server_port, cut_after
        self.cuts = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True, name="cutting-proxy").start()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.server_port), timeout=30)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
        self._pipe(upstream, client, self.cut_after)

    def _pipe(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while chunk := source.recv(16384):
                if limit is not None and sent + len(chunk) > limit:
                    sink.sendall(chunk[: limit - sent])
                    with self._lock:
                        self.cuts += 1
                    break
                sink.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
