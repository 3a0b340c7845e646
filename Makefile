# grindvakt: `make demo` runs a virtual site, `make test` runs every test. Both set up what is missing.
PY := .venv/bin/python
BOARD ?= boards/esp32-devkitc-i2c.json
JOBS ?= 2

.PHONY: setup test test-fast bench demo build firmware deploy clean

setup:
	@tools/setup.sh

test: setup
	$(PY) -m pytest -n $(JOBS) -q

bench: setup
	$(PY) -m tools.bench

demo: setup
	$(PY) -m tools.demo $(DEMO_ARGS)

build: setup
	$(PY) -m tools.build --board $(BOARD)

# the reader frozen into MicroPython for a "firmware": "frozen" board (tools/firmware.py, docs/install.md);
# FIRMWARE_ARGS=--dry-run prints the toolchain and the commands without building;
# PROFILE=production: flash encryption, secure boot v2, no REPL (burns eFuses: docs/security.md)
PROFILE ?= development
firmware: setup
	$(PY) -m tools.firmware build $(BOARD) --profile $(PROFILE) $(FIRMWARE_ARGS)

deploy: setup
	$(PY) -m tools.deploy --port $(PORT) --board $(BOARD) --reader $(READER) $(DEPLOY_ARGS)

clean:
	rm -rf build .pytest_cache
