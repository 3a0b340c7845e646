"""A loopback TCP proxy whose link can be cut: a reader's network path in the virtual site.

`cut()` drops every open connection and refuses new ones (the cable is out); `blackhole()`
accepts connections but never passes a byte (a hung connect/handshake); `restore()` mends it.
"""
from __future__ import annotations

import selectors
import socket
import threading


class NetCut:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", listen_port: int = 0):
        self.target = (target_host, target_port)
        self.server = socket.create_server(("127.0.0.1", listen_port))
        self.port = self.server.getsockname()[1]
        self.mode = "up"  # up | cut | blackhole
        self._pairs: list[tuple[socket.socket, socket.socket | None]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=f"netcut:{self.port}", daemon=True)
        self._thread.start()

    # -- controls --
    def cut(self) -> None:
        self.mode = "cut"
        self._close_all()

    def blackhole(self) -> None:
        self.mode = "blackhole"
        self._close_all()

    def restore(self) -> None:
        self.mode = "up"

    def close(self) -> None:
        self._stop = True
        self._close_all()
        self.server.close()
        self._thread.join(2)

    def _close_all(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for a, b in pairs:
            for s in (a, b):
                if s is not None:
                    try:
                        s.close()
                    except OSError:
                        pass

    # -- the pump --
    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        self.server.setblocking(False)
        sel.register(self.server, selectors.EVENT_READ)
        while not self._stop:
            try:
                events = sel.select(0.1)
            except (OSError, ValueError):
                events = []
            with self._lock:
                live = {id(s) for p in self._pairs for s in p if s is not None}
            for key in list(sel.get_map().values()):
                if key.fileobj is not self.server and id(key.fileobj) not in live:
                    sel.unregister(key.fileobj)
            for key, _ in events:
                sock = key.fileobj
                if sock is self.server:
                    try:
                        client, _ = self.server.accept()
                    except OSError:
                        continue
                    if self.mode == "cut":
                        client.close()
                        continue
                    upstream = None
                    if self.mode == "up":
                        try:
                            upstream = socket.create_connection(self.target, timeout=2)
                        except OSError:
                            client.close()
                            continue
                    with self._lock:
                        self._pairs.append((client, upstream))
                    _register(sel, client, upstream)
                    if upstream is not None:
                        _register(sel, upstream, client)
                    continue
                peer = key.data
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                if peer is None:  # blackhole: swallow
                    if not data:
                        self._drop(sock, None)
                    continue
                if not data:
                    self._drop(sock, peer)
                    continue
                try:
                    peer.sendall(data)
                except OSError:
                    self._drop(sock, peer)

    def _drop(self, a: socket.socket, b: socket.socket | None) -> None:
        with self._lock:
            self._pairs = [p for p in self._pairs if a not in p]
        for s in (a, b):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def _register(sel: selectors.BaseSelector, sock: socket.socket, data: object) -> None:
    # cut() closes sockets from another thread while the selector still holds them; the kernel
    # hands their descriptor number to the next accepted connection, and registering that one
    # would fail ("already registered") and kill the pump: drop the stale entry first.
    stale = sel.get_map().get(sock.fileno())
    if stale is not None:
        sel.unregister(stale.fileobj)
    sel.register(sock, selectors.EVENT_READ, data)
