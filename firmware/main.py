# Runs after boot.py: the reader application. Ctrl-C on the serial port stops it at the REPL,
# except on production firmware holding secrets (gv/profile.py: no REPL there).
try:
    from gv.profile import guard, hold
except ImportError:  # a stock board part-way through a deploy that brings this module
    def guard():
        return False

    def hold():
        pass


try:
    guard()  # again: the port arms Ctrl-C afresh for main.py
except KeyboardInterrupt:
    guard()
import json


def _half_deployed():
    # deploy writes /deploy.json "in-progress" before it copies and "complete" last: a board
    # whose deploy was cut off must not run a mix of old and new modules. The door stays shut.
    try:
        with open("/deploy.json") as f:
            return json.load(f).get("state") == "in-progress"
    except (OSError, ValueError):
        return False  # never deployed by the tool (a hand-copied board): run


if _half_deployed():
    print("grindvakt: deploy was cut off part-way; not starting. Run the deploy again.")
else:
    import gv.app

    gv.app.main()
hold()  # a locked console never falls through to the REPL: reset instead
