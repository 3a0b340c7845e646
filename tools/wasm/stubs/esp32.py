# `esp32` for the 32-bit WebAssembly MicroPython (heap figures and proofs only; never deployed):
# Partition.find(TYPE_DATA, label="vfs") gives the RAM flash that flashfs.mount() put LittleFS's
# data layout on, as the ESP32's "vfs" partition beneath its LittleFS. Nothing else of the module
# (no idf_heap_info: gv.memory then reports what a port without an ESP-IDF heap reports).
PARTS = []  # flashfs.RamFlash devices (the probe appends the one it mounts)


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    @staticmethod
    def find(type=TYPE_APP, subtype=0xFF, label=None):
        if type != Partition.TYPE_DATA:
            return []
        return [p for p in PARTS if label is None or p.label == label]
