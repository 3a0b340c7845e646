# Runs first at every boot. Kept minimal: a fault here would stop the REPL from coming up.
import gc

try:
    from gv.fsmount import remount_root

    remount_root()  # larger LittleFS read caches: see gv/fsmount.py
except Exception as e:  # the port's own mount stays; the reader still runs on it
    print("boot: filesystem settings not applied:", e)
gc.collect()
