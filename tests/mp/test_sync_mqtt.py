# MQTT client edge cases a real mosquitto can't be made to show on demand, against a scripted
# broker in the same unix-port process: a broker that goes silent (keepalive must notice), one
# that drops the link before a PUBACK (the publish must be retried on the next connection and
# subscriptions renewed), and a listener that never answers (connect must time out) - all while
# a 5 ms loop standing in for the gate keeps its pace.
import asyncio
import socket

from gv.sync.mqtt import MQTTClient
from mpt import eq


class Script:
    """A scripted broker: session n behaves as modes[n] ('ok', 'silent', 'drop_publish')."""

    def __init__(self, modes):
        self.modes = modes
        self.sessions = 0
        self.publishes = []  # (session, topic, payload, dup)
        self.subs = []  # (session, topic)

    async def handle(self, r, w):
        mode = self.modes[min(self.sessions, len(self.modes) - 1)]
        self.sessions += 1
        n = self.sessions
        try:
            while True:
                b0 = (await r.readexactly(1))[0]
                ln = 0
                sh = 0
                while True:
                    b = (await r.readexactly(1))[0]
                    ln |= (b & 0x7F) << sh
                    sh += 7
                    if not b & 0x80:
                        break
                body = await r.readexactly(ln) if ln else b""
                k = b0 & 0xF0
                if k == 0x10:
                    w.write(b"\x20\x02\x00\x00")
                elif k == 0x80:
                    tl = (body[2] << 8) | body[3]
                    self.subs.append((n, body[4:4 + tl].decode()))
                    w.write(b"\x90\x03" + body[:2] + b"\x01")
                elif k == 0x30:
                    tl = (body[0] << 8) | body[1]
                    topic = body[2:2 + tl].decode()
                    pid = body[2 + tl:4 + tl]
                    self.publishes.append((n, topic, body[4 + tl:], bool(b0 & 8)))
                    if mode == "drop_publish":
                        w.close()
                        return
                    w.write(b"\x40\x02" + pid)
                elif k == 0xC0:
                    if mode == "silent":
                        continue  # never answers a ping: a dead link that stays open
                    w.write(b"\xd0\x00")
                await w.drain()
        except Exception:  # noqa: BLE001 - the client went away
            pass
        finally:
            w.close()


class Gate:
    def __init__(self):
        self.maxgap = 0
        self.loops = 0

    async def run(self):
        t = asyncio.ticks()
        while True:
            await asyncio.sleep_ms(5)
            now = asyncio.ticks()
            self.maxgap = max(self.maxgap, asyncio.ticks_diff(now, t))
            t = now
            self.loops += 1


async def _until(pred, ms):
    for _ in range(ms // 20):
        if pred():
            return True
        await asyncio.sleep_ms(20)
    return False


def _port():
    # a free loopback port (the unix port's sockets have no getsockname to ask for one)
    import os

    for _ in range(50):
        port = 20000 + int.from_bytes(os.urandom(2), "big") % 40000
        s = socket.socket()
        try:
            s.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
            return port
        except OSError:
            pass
        finally:
            s.close()
    raise OSError("no free port")


def test_silent_broker_is_noticed_by_keepalive_and_publish_retried():
    async def main():
        sc = Script(["silent", "drop_publish", "ok"])
        port = _port()
        srv = await asyncio.start_server(sc.handle, "127.0.0.1", port)
        gate = Gate()
        asyncio.create_task(gate.run())
        c = MQTTClient("t", "127.0.0.1", port, keepalive=1, backoff_ms=(50, 200))
        c.subscribe("gv/s/r/in")
        asyncio.create_task(c.run())
        eq(await _until(lambda: c.connected, 2000), True)
        # session 1 never answers pings: within ~1.5 keepalives the client gives up on it
        eq(await _until(lambda: sc.sessions >= 2, 4000), True, c.last_error)
        # session 2 drops the link on the first PUBLISH (no PUBACK): retried on session 3
        ok = await asyncio.wait_for_ms(c.publish("gv/s/r/out", b"ev", qos=1), 6000)
        eq(ok, True)
        eq([(n, t, bytes(p)) for n, t, p, _ in sc.publishes],
           [(2, "gv/s/r/out", b"ev"), (3, "gv/s/r/out", b"ev")])
        eq([n for n, t in sc.subs], [1, 2, 3])  # subscriptions renewed on every connect
        eq(gate.maxgap < 60, True, gate.maxgap)
        c.stop()
        srv.close()

    asyncio.run(main())


def test_connect_to_a_listener_that_never_answers_times_out():
    async def main():
        # a socket that listens but never accepts: the TCP handshake completes in its backlog,
        # then nothing - the client must time out the CONNECT and keep backing off
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        port = _port()
        ls.bind(socket.getaddrinfo("127.0.0.1", port)[0][-1])
        ls.listen(1)
        gate = Gate()
        asyncio.create_task(gate.run())
        c = MQTTClient("t", "127.0.0.1", port, connect_timeout_ms=300, backoff_ms=(50, 100))
        asyncio.create_task(c.run())
        await asyncio.sleep_ms(1500)
        eq(c.connected, False)
        eq(c.failures >= 2, True, c.failures)
        eq("Timeout" in (c.last_error or ""), True, c.last_error)
        eq(gate.maxgap < 60, True, gate.maxgap)
        eq(gate.loops > 150, True, gate.loops)
        c.stop()
        ls.close()

    asyncio.run(main())
