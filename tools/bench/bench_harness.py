"""Baseline figures of the stand-ins themselves: the heap the unix port gives a reader."""
from tools import mpy
from tools.bench import metric


def run() -> dict:
    out = mpy.run_snippet("import gc; gc.collect(); print(gc.mem_free())", heapsize="128k")
    return {"harness.heap_free_at_start_128k": metric(int(out.stdout.strip()), "bytes",
                                                      "the -X heapsize=128k proxy for an ESP32")}
