# grindvakt reader firmware package. Modules here run on MicroPython (the board and the
# unix port); the codecs among them (wire protocol, allowlist format) also run on CPython,
# where the host imports the very same code.
VERSION = "0.1.0"
