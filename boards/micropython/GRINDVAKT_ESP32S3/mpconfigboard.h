// grindvakt reader firmware for an ESP32-S3 without PSRAM. os.uname().machine reads
// "grindvakt reader with ESP32S3": tools.deploy takes the chip from the part after " with ".
#define MICROPY_HW_BOARD_NAME "grindvakt reader"
#define MICROPY_HW_MCU_NAME "ESP32S3"

// The REPL on UART0 as well as on USB: a reader in its box is deployed through either.
#define MICROPY_HW_ENABLE_UART_REPL (1)
#define MICROPY_HW_ENABLE_SDCARD (0)
