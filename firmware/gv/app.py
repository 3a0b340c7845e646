# The reader application: wires board, config, drivers, gate and sync together (grows with them).
import asyncio

import machine

_WDT_MS = 8000
_wdt = None


def _relax_watchdog():
    # An ESP32 watchdog can't be stopped once started; give a person at the REPL an hour.
    if _wdt is not None:
        machine.WDT(timeout=3600000)


async def _run():
    global _wdt
    _wdt = machine.WDT(timeout=_WDT_MS)
    print("grindvakt: reader up")
    while True:
        _wdt.feed()
        await asyncio.sleep_ms(50)


def main():
    try:
        asyncio.run(_run())
    except KeyboardInterrupt:
        _relax_watchdog()
        print("grindvakt: stopped by Ctrl-C; watchdog relaxed to 1 h")
