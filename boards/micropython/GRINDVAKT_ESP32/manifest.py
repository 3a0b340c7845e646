# What is frozen into the grindvakt reader firmware (read by MicroPython's makemanifest.py, and by
# tools/firmware.py for the checks `make test` runs without ESP-IDF).
import os

# The port's own frozen modules (_boot, inisetup, asyncio, ...).
include("$(PORT_DIR)/boards/manifest.py")

# The reader: firmware/ of this repository (three folders up). Frozen boot.py and main.py run in
# place of any on the filesystem; gv must not be on the filesystem too ("" comes before
# ".frozen" in sys.path), which tools.deploy makes sure of.
_FIRMWARE = "$(BOARD_DIR)/../../../firmware"
module("boot.py", base_path=_FIRMWARE)
module("main.py", base_path=_FIRMWARE)
package("gv", base_path=_FIRMWARE)

# The build id (a hash of the frozen sources, the board folder and the pinned versions), written by
# tools/firmware.py into the build folder it names here; tools.deploy reads gv_build.ID over the REPL.
_GEN = os.environ.get("GV_FIRMWARE_GEN")
if not _GEN:
    raise SystemExit("GV_FIRMWARE_GEN is not set: build this board with `make firmware` (tools/firmware.py)")
module("gv_build.py", base_path=_GEN)
