# Runs first at every boot. Kept minimal: a fault here would stop the REPL from coming up.
try:
    from gv.profile import guard
except ImportError:  # a stock board part-way through a deploy that brings this module
    def guard():
        return False


try:  # production firmware holding secrets: no Ctrl-C into the REPL (gv/profile.py)
    guard()
except KeyboardInterrupt:  # one that landed before the lock: the lock holds now
    guard()
import gc

try:
    from gv.fsmount import remount_root

    remount_root()  # larger LittleFS read caches: see gv/fsmount.py
except Exception as e:  # the port's own mount stays; the reader still runs on it
    print("boot: filesystem settings not applied:", e)
gc.collect()
