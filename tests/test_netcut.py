"""The virtual site's network cutter passes bytes, cuts, blackholes and mends."""
import socket
import threading

import pytest

from tools.netcut import NetCut


@pytest.fixture
def echo_server():
    srv = socket.create_server(("127.0.0.1", 0))
    stop = False

    def serve():
        srv.settimeout(0.2)
        while not stop:
            try:
                c, _ = srv.accept()
            except OSError:
                continue
            threading.Thread(target=lambda c=c: [c.sendall(d) for d in iter(lambda: c.recv(100), b"")],
                             daemon=True).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop = True
    srv.close()


def _echo(port, payload=b"ping"):
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(payload)
        return s.recv(100)


def test_passes_cuts_and_restores(echo_server):
    nc = NetCut(echo_server)
    try:
        assert _echo(nc.port) == b"ping"
        nc.cut()
        try:
            got = _echo(nc.port)
        except OSError:
            got = None
        assert got in (None, b"")  # refused, reset or closed: never answered
        nc.restore()
        assert _echo(nc.port, b"back") == b"back"
    finally:
        nc.close()


def test_blackhole_accepts_but_never_answers(echo_server):
    nc = NetCut(echo_server)
    try:
        nc.blackhole()
        with socket.create_connection(("127.0.0.1", nc.port), timeout=2) as s:
            s.sendall(b"hello?")
            s.settimeout(0.5)
            with pytest.raises(socket.timeout):
                s.recv(10)
    finally:
        nc.close()


def test_a_socket_closed_by_cut_never_blocks_the_next_one():
    # cut() closes sockets from the test's thread while the pump's selector still holds them;
    # the next accepted connection gets the same descriptor number and must register anyway
    import selectors

    from tools.netcut import _register

    sel = selectors.DefaultSelector()
    old = socket.socket()
    _register(sel, old, "old")
    fd = old.fileno()
    old.close()
    new = socket.socket()
    try:
        assert new.fileno() == fd  # the kernel hands out the lowest free number
        _register(sel, new, "new")
        assert sel.get_map()[fd].data == "new"
    finally:
        new.close()
        sel.close()
