# `ssl` for the 32-bit WebAssembly MicroPython. On an ESP32 mbedtls keeps the parsed CA and each
# connection's buffers in the ESP-IDF heap, not MicroPython's: so does this stand-in (nothing kept).
PROTOCOL_TLS_CLIENT = 0
CERT_REQUIRED = 2


class SSLContext:
    def __init__(self, protocol):
        self.verify_mode = 0

    def load_verify_locations(self, cafile=None, cadata=None):
        pass

    def wrap_socket(self, sock, server_side=False, do_handshake_on_connect=True,
                    server_hostname=None):
        raise OSError(113)
