"""`make demo` is the main job: its whole narrated gate day runs on real parts (virtual readers with
the real firmware, mosquitto, the host service) and every outcome it narrates is the expected one."""
import re

import pytest

from tools import demo


class _Interrupted(demo.VirtualSite):
    """The site as Ctrl-C finds it while it is being set up."""

    def provision(self):
        raise KeyboardInterrupt

    def stop(self):
        self.stopped = True


@pytest.mark.parametrize("keep, said", [(True, "Ctrl-C here stops everything"),
                                        (False, "runs to its end by itself")])
def test_the_demo_says_first_how_it_ends(tmp_path, capsys, monkeypatch, keep, said):
    monkeypatch.setattr(demo, "VirtualSite", _Interrupted)
    argv = ["--dir", str(tmp_path / "site")] + (["--keep"] if keep else [])
    assert demo.main(argv) == 130
    out = capsys.readouterr().out
    first = out.strip().splitlines()[0]
    assert said in first and "Ctrl-C" in first, out
    assert "demo stopped by Ctrl-C; the site is stopped" in out and "Traceback" not in out


def test_the_demo_gate_day(tmp_path, capsys):
    assert demo.run(tmp_path / "site", keep=False) == 0
    out = capsys.readouterr().out
    expect = [
        r"Anna holds her card steadily on gate-01\n.*-> GRANTED",
        r"Carl \(never activated\) -> refused",
        r"Dana \(card fee unpaid\) -> refused",
        r"Erik \(terminated\) -> refused",
        r"while it is locked -> refused",
        r"after the lock -> GRANTED",
        r"types 1234# -> GRANTED",
        r"duress PIN 4712# -> GRANTED",
        r"0000# -> refused",
        r"2222# -> refused",
        r"after the reboot Bo holds his card -> refused",
        r"the web console: http://127\.0\.0\.1:\d+/  \(sign in as demo / ",
        r"the host's record of the duress: .*,alarm,grant,duress PIN,AB-2403-000102",
        r"the console raised the alarm .*#\d+ +duress .*DURESS PIN at gate-02",
        r"gate-01 applied the block \d+ ms after the command; Anna's next presentation -> refused",
        r"network cut; Bo holds his card -> GRANTED",
        r"the buffered events reached the host",
        r"Staff ledger \(personalliggare\), site site-a",
    ]
    for pattern in expect:
        assert re.search(pattern, out), f"demo did not show: {pattern}\n{out}"
