# An asyncio MQTT 3.1.1 client for the reader: QoS 0/1, publish retried until PUBACK, QoS 1
# subscriptions made again on every connect, keepalive, last will, reconnect with exponential
# backoff and jitter, TLS with a pinned CA. Nothing here blocks: the TCP connect is non-blocking
# and every network wait is bounded, so a dead broker or a hung connect never stalls the gate.
# (socket.getaddrinfo is the one blocking call MicroPython offers: give the broker as an IP
# address on real boards, or accept one DNS lookup per connect attempt.)
import asyncio
import os
import socket
import struct

from gv.compat import ticks_add, ticks_diff, ticks_ms

try:
    from errno import EINPROGRESS
except ImportError:  # pragma: no cover
    EINPROGRESS = 115

_CONNECT = 0x10
_CONNACK = 0x20
_PUBLISH = 0x30
_PUBACK = 0x40
_SUBSCRIBE = 0x82
_SUBACK = 0x90
_PINGREQ = b"\xc0\x00"
_PINGRESP = 0xD0


class MQTTError(OSError):
    pass


def _varlen(n):
    out = bytearray()
    while True:
        d = n & 0x7F
        n >>= 7
        out.append(d | 0x80 if n else d)
        if not n:
            return out


def _str(s):
    b = s.encode() if isinstance(s, str) else bytes(s)
    return struct.pack(">H", len(b)) + b


def _rand(n):
    # a few random bits for jitter (os.urandom exists on both ports)
    return int.from_bytes(os.urandom(2), "big") % (n + 1) if n > 0 else 0


class MQTTClient:
    """`run()` is the connection task: start it once with asyncio.create_task and it keeps the
    link up for ever. `publish()` waits for a connection and, at QoS 1, for the PUBACK.
    `on_message(topic_str, payload_bytes)` is a plain function called for each incoming
    PUBLISH in order, from the receive task: it must not await (queue work for another task).
    `on_connect()` (async, optional) runs after every connect once subscriptions are acked."""

    def __init__(self, client_id, host, port, user=None, password=None, keepalive=30,
                 ssl=None, server_hostname=None, will=None, on_message=None, on_connect=None,
                 connect_timeout_ms=5000, ack_timeout_ms=5000, backoff_ms=(500, 30000),
                 max_packet=4096):
        self.client_id = client_id
        self.host = host
        self.port = port
        self.user = user
        self.password = password
        self.keepalive = keepalive
        self.ssl = ssl  # an ssl.SSLContext with the CA loaded, or None for plain TCP
        self.server_hostname = server_hostname or host
        self.will = will  # (topic, message, retain) sent at QoS 1 by the broker if we vanish
        self.on_message = on_message
        self.on_connect = on_connect
        self.before_tls = None  # () -> False to put a TLS connect off (backoff) for want of memory
        self.connect_timeout_ms = connect_timeout_ms
        self.ack_timeout_ms = ack_timeout_ms
        self.backoff_ms = backoff_ms
        self.max_packet = max_packet
        self.subs = []  # topics subscribed at QoS 1 on every connect
        self.up = asyncio.Event()  # set while connected and subscribed
        self.connected = False
        self.connects = 0  # successful connects so far
        self.failures = 0  # consecutive failed attempts
        self.last_error = None  # a short string: why the last connection ended
        self.dropped = 0  # incoming packets too large to take (skipped unparsed)
        self.rx_bytes = 0  # MQTT bytes received and sent (before TLS framing)
        self.tx_bytes = 0
        self._stream = None
        self._wlock = asyncio.Lock()
        self._pid = 0
        self._waiting = {}  # pid -> Event (PUBACK or SUBACK)
        self._rx = 0
        self._stop = False
        self._was_up = False
        self.on_attempt = None  # called before every connection attempt (plain function)
        self.auth_refused = False  # the last attempt's CONNACK refused the credentials

    # -- public --
    def subscribe(self, topic):
        if topic not in self.subs:
            self.subs.append(topic)

    async def publish(self, topic, msg, qos=0, retain=False, retry=True):
        """QoS 0: send if connected (True) else drop (False). QoS 1: wait for a connection, send,
        resend with DUP until PUBACK (after a reconnect, msg is rebuilt if it is callable, so a
        session-bound message can be re-sealed); returns True once acknowledged. retry=False:
        give up (False) when the connection it was sent on ends, for callers that re-decide."""
        if qos == 0:
            if not self.connected:
                return False
            try:
                await self._send(self._publish_pkt(topic, msg() if callable(msg) else msg, 0,
                                                   retain, 0, False))
                return True
            except OSError:
                return False
        while not self._stop:
            await self.up.wait()
            session = self.connects
            body = msg() if callable(msg) else msg
            pid = self._next_pid()
            ev = asyncio.Event()
            self._waiting[pid] = ev
            dup = False
            try:
                while self.connected and session == self.connects:
                    try:
                        await self._send(self._publish_pkt(topic, body, 1, retain, pid, dup))
                    except OSError:
                        break
                    try:
                        await asyncio.wait_for_ms(ev.wait(), self.ack_timeout_ms)
                    except asyncio.TimeoutError:
                        dup = True
                        continue
                    if pid not in self._waiting:  # acked (not merely woken by a disconnect)
                        return True
                    break
            finally:
                self._waiting.pop(pid, None)
            if not retry:
                return False
        return False

    def stop(self):
        self._stop = True
        self._close()

    async def run(self):
        lo, hi = self.backoff_ms
        delay = lo
        while not self._stop:
            if self.on_attempt is not None:
                self.on_attempt()  # e.g. choose credentials (a re-key in progress)
            self.auth_refused = False
            try:
                await self._session()
            except Exception as e:  # noqa: BLE001 - any failure ends this connection only
                err = ("%s: %s" % (type(e).__name__, e)).replace("\n", " ")  # mbedTLS: 2 lines
                if err != self.last_error or self.failures % 10 == 9:
                    # on the console: what the installer (and the deploy) sees on the serial port
                    print("mqtt: %s:%d: %s" % (self.host, self.port, err))
                self.last_error = err
            was_up = self._was_up
            self._was_up = False
            self._close()
            if self._stop:
                break
            if was_up:
                delay = lo
                self.failures = 0
            else:
                self.failures += 1
            # exponential backoff with jitter, so a fleet doesn't reconnect in lockstep
            await asyncio.sleep_ms(delay // 2 + _rand(delay // 2))
            delay = min(delay * 2, hi)

    # -- the connection --
    def _next_pid(self):
        self._pid = self._pid % 65535 + 1
        return self._pid

    def _connect_pkt(self):
        flags = 0x02  # clean session: the reader resyncs itself on every connect
        payload = _str(self.client_id)
        if self.will:
            topic, message, retain = self.will
            flags |= 0x04 | (1 << 3) | (0x20 if retain else 0)
            payload += _str(topic) + _str(message)
        if self.user is not None:
            flags |= 0x80
            payload += _str(self.user)
            if self.password is not None:
                flags |= 0x40
                payload += _str(self.password)
        var = _str("MQTT") + bytes([4, flags]) + struct.pack(">H", self.keepalive)
        return bytes([_CONNECT]) + _varlen(len(var) + len(payload)) + var + payload

    def _publish_pkt(self, topic, msg, qos, retain, pid, dup):
        t = _str(topic)
        n = len(t) + len(msg) + (2 if qos else 0)
        b0 = _PUBLISH | (qos << 1) | (1 if retain else 0) | (8 if dup else 0)
        head = bytes([b0]) + _varlen(n) + t
        if qos:
            head += struct.pack(">H", pid)
        return head + msg

    async def _send(self, pkt):
        s = self._stream
        if s is None:
            raise OSError("not connected")
        async with self._wlock:
            s.write(pkt)
            await s.drain()
        self.tx_bytes += len(pkt)

    async def _open(self):
        if self.ssl is not None and self.before_tls is not None and not self.before_tls():
            raise MQTTError("too little ESP-IDF heap for a TLS handshake: waiting")
        ai = socket.getaddrinfo(self.host, self.port, 0, socket.SOCK_STREAM)[0]
        sock = socket.socket(ai[0], ai[1], ai[2])
        try:  # small MQTT packets: no Nagle delay (IPPROTO_TCP 6, TCP_NODELAY 1 on lwIP and Linux)
            sock.setsockopt(6, 1, 1)
        except (OSError, AttributeError):
            pass
        sock.setblocking(False)
        try:
            sock.connect(ai[-1])
        except OSError as e:
            if e.errno != EINPROGRESS:
                sock.close()
                raise
        if self.ssl is not None:
            sock = self.ssl.wrap_socket(sock, server_hostname=self.server_hostname,
                                        do_handshake_on_connect=False)
            sock.setblocking(False)
        stream = asyncio.StreamWriter(sock, {})
        self._stream = stream
        # CONNECT / CONNACK within connect_timeout_ms, whatever the network does
        await asyncio.wait_for_ms(self._handshake(stream), self.connect_timeout_ms)

    async def _handshake(self, stream):
        stream.write(self._connect_pkt())
        await stream.drain()
        head = await stream.readexactly(4)
        if head[0] != _CONNACK or head[1] != 2:
            raise MQTTError("bad CONNACK")
        if head[3] in (4, 5):  # bad user name or password / not authorised
            self.auth_refused = True
        if head[3] != 0:
            raise MQTTError("connection refused, code %d" % head[3])

    async def _session(self):
        await self._open()
        self._rx = ticks_ms()
        reader = asyncio.create_task(self._reader())
        try:
            for topic in self.subs:
                await self._subscribe(topic)
            self.connected = True
            self._was_up = True
            self.connects += 1
            self.last_error = None
            print("mqtt: connected to %s:%d" % (self.host, self.port))  # the installer's console
            self.up.set()
            if self.on_connect is not None:
                await self.on_connect()
            ping_at = ticks_add(ticks_ms(), self.keepalive * 500)
            while not self._stop and self._stream is not None:
                await asyncio.sleep_ms(200)
                now = ticks_ms()
                if ticks_diff(now, self._rx) > self.keepalive * 1500:
                    raise MQTTError("keepalive: broker silent")
                if ticks_diff(now, ping_at) >= 0:
                    ping_at = ticks_add(now, self.keepalive * 500)
                    await self._send(_PINGREQ)
        finally:
            reader.cancel()

    async def _subscribe(self, topic):
        pid = self._next_pid()
        ev = asyncio.Event()
        self._waiting[pid] = ev
        t = _str(topic)
        await self._send(bytes([_SUBSCRIBE]) + _varlen(len(t) + 3) + struct.pack(">H", pid) + t
                         + b"\x01")
        try:
            await asyncio.wait_for_ms(ev.wait(), self.ack_timeout_ms)
        finally:
            self._waiting.pop(pid, None)
        if self._stream is None:
            raise MQTTError("lost while subscribing")
        if self.last_error == "subscription refused":
            raise MQTTError("subscription to %s refused" % topic)

    async def _reader(self):
        try:
            s = self._stream
            while True:
                b0 = (await s.readexactly(1))[0]
                n = 0
                shift = 0
                while True:
                    b = (await s.readexactly(1))[0]
                    n |= (b & 0x7F) << shift
                    if not b & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise MQTTError("bad length")
                self._rx = ticks_ms()
                self.rx_bytes += 2 + shift // 7 + n
                if n > self.max_packet:
                    # too big to take into the heap: skip it in small pieces
                    self.dropped += 1
                    while n:
                        n -= len(await s.readexactly(min(n, 256)))
                    continue
                body = await s.readexactly(n) if n else b""
                self._rx = ticks_ms()
                kind = b0 & 0xF0
                if kind == _PUBLISH:
                    await self._incoming(b0, body)
                elif kind == _PUBACK or kind == _SUBACK:
                    if len(body) >= 2:
                        pid = (body[0] << 8) | body[1]
                        ev = self._waiting.pop(pid, None)
                        if ev is not None:
                            if kind == _SUBACK and (len(body) < 3 or body[2] & 0x80):
                                self.last_error = "subscription refused"
                            ev.set()
                # PINGRESP and anything else only refresh _rx
        except Exception as e:  # noqa: BLE001
            self._close()
            if isinstance(e, asyncio.CancelledError):
                raise
            # a dropped link is routine: the session loop sees the stream gone and reconnects.
            # Nothing awaits this task, so re-raising would only print "Task exception wasn't
            # retrieved" on the console.
            self.last_error = "%s: %s" % (type(e).__name__, e)

    async def _incoming(self, b0, body):
        qos = (b0 >> 1) & 3
        if len(body) < 2:
            return
        tl = (body[0] << 8) | body[1]
        off = 2 + tl
        if off > len(body):
            return
        topic = body[2:off]
        pid = 0
        if qos:
            if off + 2 > len(body):
                return
            pid = (body[off] << 8) | body[off + 1]
            off += 2
        if self.on_message is not None:
            try:
                self.on_message(topic.decode(), memoryview(body)[off:])
            except Exception as e:  # noqa: BLE001 - a bad message never kills the link
                self.last_error = "handler: %s" % e
        if qos == 1:
            await self._send(b"\x40\x02" + struct.pack(">H", pid))

    def _close(self):
        s = self._stream
        self._stream = None
        self.connected = False
        self.up.clear()
        # wake every publisher waiting for an ack: it retries on the next connection
        for ev in self._waiting.values():
            ev.set()
        if s is not None:
            try:
                s.close()
            except Exception:  # noqa: BLE001
                pass


def tls_context(ca):
    """An SSLContext that trusts every certificate in `ca` (PEM text with one or more
    certificates, or one DER certificate): the site CA, pinned. A CA file holding the old and
    the new CA lets a site roll its CA without re-provisioning a reader."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # one call per certificate: mbedtls parses one DER certificate per call (a concatenation
    # of DER or a PEM bundle is refused) and each call adds to the trusted chain
    for der in pem_certs(ca):
        ctx.load_verify_locations(cadata=der)
    return ctx


def pem_certs(ca):
    """DER bytes of every certificate in PEM text (or [ca] for DER bytes); ValueError if none."""
    if isinstance(ca, (bytes, bytearray)) and not ca.startswith(b"-----"):
        return [bytes(ca)]
    from binascii import a2b_base64

    text = ca.decode() if isinstance(ca, (bytes, bytearray)) else ca
    out = []
    b64 = None
    for line in text.split("\n"):
        line = line.strip()
        if line.startswith("-----BEGIN"):
            b64 = [] if "CERTIFICATE" in line else None
        elif line.startswith("-----END"):
            if b64:
                out.append(a2b_base64("".join(b64)))
            b64 = None
        elif b64 is not None and line:
            b64.append(line)
    if not out:
        raise ValueError("no certificate in the CA text")
    return out

