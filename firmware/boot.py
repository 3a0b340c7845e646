# Runs first at every boot. Kept minimal: a fault here would stop the REPL from coming up.
import gc

gc.collect()
