"""After the reset, deploy waits for the reader's own authenticated HELLO (docs/protocol.md) on a real
mosquitto: a retained hello from an earlier session or a forged one does not count."""
import os
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest

from tests.broker import Broker
from tools import deploy, provision
from tools.virtual_board.client import VirtualBoard

from gv.sync import protocol as P  # noqa: E402  (firmware/ is on sys.path via conftest)

ROOT = Path(__file__).resolve().parent.parent
BOARD = ROOT / "boards" / "esp32-wrover-i2c.json"  # stock MicroPython + .mpy files (PSRAM)


def config_for(b, reader_id="gate-01"):
    bc = b.reader_broker_config(reader_id)
    return provision.make_config(reader_id, "site-a", wifi_ssid="site-a", wifi_password="wifi-secret",
                                 broker_host=bc["host"], broker_port=bc["port"], broker_password=bc["password"],
                                 secret_hex=os.urandom(32).hex(), card_key_hex=os.urandom(16).hex(),
                                 pin_key_hex=os.urandom(16).hex(), tls=False, virtual=True)


def hello(key, nonce, fw):
    return P.seal(key, P.DIR_READER, P.T_HELLO, nonce, 1, P.hello_body(7, 0, 0, 1 << 20, 60000, 0, 0, fw))


def test_waiter_takes_only_a_live_authentic_hello():
    with Broker(readers=[("gate-01", "site-a")]) as b:
        cfg = config_for(b)
        key = P.Key(bytes.fromhex(cfg["secret"]), "gate-01")
        topic = P.topic("site-a", "gate-01", "hello")
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2)
        pub.username_pw_set(b.host_user, b.host_password)
        pub.connect("127.0.0.1", b.plain_port)  # the host's listener: the waiter is "host" on b.port
        pub.loop_start()
        pub.publish(topic, hello(key, b"oldsessn", "old"), qos=1, retain=True).wait_for_publish(5)
        w = deploy.HelloWaiter(cfg, user=b.host_user, password=b.host_password)
        w.start()
        try:
            time.sleep(0.5)  # the retained one arrives now
            with pytest.raises(deploy.NoHello):
                w.wait(0.5)
            forged = P.Key(os.urandom(32), "gate-01")
            pub.publish(topic, hello(forged, b"forgedss", "forged"), qos=1).wait_for_publish(5)
            pub.publish(topic, hello(key, b"newsessn", "v-new"), qos=1, retain=True).wait_for_publish(5)
            got = w.wait(10)
        finally:
            w.stop()
            pub.loop_stop()
            pub.disconnect()
        assert got["fw"] == "v-new" and got["al_version"] == 7 and got["nonce"] == b"newsessn".hex()
        assert any("bad MAC" in e for e in w.errors)


APP = (ROOT / "firmware" / "gv" / "app.py").read_text()


@pytest.mark.skipif("gv.sync" not in APP, reason="firmware/gv/app.py does not start the sync client yet: "
                                               "the reader can't say hello until it does")
@pytest.mark.skipif(not (ROOT / "firmware" / "gv" / "pn532" / "driver.py").exists(),
                    reason="the app can't boot without the PN532 driver (firmware/gv/pn532/driver.py)")
def test_deployed_reader_boots_and_says_hello(tmp_path):
    with Broker(readers=[("gate-01", "site-a")]) as b, VirtualBoard(BOARD, tmp_path / "flash.img") as vb:
        vb.wait_for(lambda e: e.get("event") == "wdt-start", 30)
        rep = deploy.deploy(vb.pty, BOARD, config=config_for(b), hello_timeout=30, mqtt_user=b.host_user,
                            mqtt_password=b.host_password, progress=deploy.Progress(quiet=True),
                            build_root=tmp_path / "build")
        assert rep.hello is not None and rep.hello["fw"], rep.as_dict()
