# grindvakt reader firmware for a plain ESP32 (no PSRAM, 4 MB flash): MicroPython with the reader
# frozen in (docs/install.md; built by `make firmware`, tools/firmware.py).
set(IDF_TARGET esp32)

# No boards/sdkconfig.ble: the reader has no use for Bluetooth, and leaving it out saves flash and
# the BT controller's RAM.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

# ESP-IDF resolves a relative partition table path against the port folder, and this board folder
# lives outside it: hand it the absolute path through a generated fragment (read after the others).
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.partitions
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${MICROPY_BOARD_DIR}/partitions.csv\"\n")
list(APPEND SDKCONFIG_DEFAULTS ${CMAKE_BINARY_DIR}/sdkconfig.partitions)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
