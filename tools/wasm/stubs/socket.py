# `socket` for the 32-bit WebAssembly MicroPython: no network here (the probes feed the sync
# engine its messages directly). Every connect fails as an unplugged cable would.
AF_INET = 2
SOCK_STREAM = 1
IPPROTO_TCP = 6
SOL_SOCKET = 1
SO_REUSEADDR = 4


def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
    return [(AF_INET, SOCK_STREAM, IPPROTO_TCP, "", (host, port))]


class socket:
    def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=IPPROTO_TCP):
        pass

    def setblocking(self, flag):
        pass

    def connect(self, addr):
        raise OSError(113)  # EHOSTUNREACH

    def close(self):
        pass
