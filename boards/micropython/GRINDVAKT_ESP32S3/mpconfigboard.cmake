# grindvakt reader firmware for an ESP32-S3 without PSRAM (8 MB flash): MicroPython with the reader
# frozen in (docs/install.md; built by `make firmware`, tools/firmware.py).
set(IDF_TARGET esp32s3)

# No boards/sdkconfig.ble: the reader has no use for Bluetooth, and leaving it out saves flash and
# the BT controller's RAM.
set(SDKCONFIG_DEFAULTS
    boards/sdkconfig.base
    ${SDKCONFIG_IDF_VERSION_SPECIFIC}
    boards/sdkconfig.usb
    ${MICROPY_BOARD_DIR}/sdkconfig.board
)

# The production profile (`make firmware PROFILE=production`, docs/security.md): flash encryption,
# secure boot v2, NVS encryption (sdkconfig.production), its own partition table, and the signing
# key's absolute path in a fragment tools/firmware.py writes beside gv_build.py.
set(GV_PARTITIONS ${MICROPY_BOARD_DIR}/partitions.csv)
if("$ENV{GV_FIRMWARE_PROFILE}" STREQUAL "production")
    list(APPEND SDKCONFIG_DEFAULTS ${MICROPY_BOARD_DIR}/sdkconfig.production $ENV{GV_FIRMWARE_GEN}/sdkconfig.signing)
    set(GV_PARTITIONS ${MICROPY_BOARD_DIR}/partitions-production.csv)
endif()

# ESP-IDF resolves a relative partition table path against the port folder, and this board folder
# lives outside it: hand it the absolute path through a generated fragment (read after the others).
file(WRITE ${CMAKE_BINARY_DIR}/sdkconfig.partitions
    "CONFIG_PARTITION_TABLE_CUSTOM=y\nCONFIG_PARTITION_TABLE_CUSTOM_FILENAME=\"${GV_PARTITIONS}\"\n")
list(APPEND SDKCONFIG_DEFAULTS ${CMAKE_BINARY_DIR}/sdkconfig.partitions)

set(MICROPY_FROZEN_MANIFEST ${MICROPY_BOARD_DIR}/manifest.py)
