// grindvakt reader firmware for a plain ESP32. os.uname().machine reads
// "grindvakt reader with ESP32": tools.deploy takes the chip from the part after " with ".
#define MICROPY_HW_BOARD_NAME "grindvakt reader"
#define MICROPY_HW_MCU_NAME "ESP32"

// The reader has no SD card slot.
#define MICROPY_HW_ENABLE_SDCARD (0)
