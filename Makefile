# grindvakt: `make demo` runs a virtual site, `make test` runs every test. Both set up what is missing:
# `make setup` everything; the demo, build, firmware and deploy only what they use (setup-site: no
# chromium and no npm, which only the tests and the bench need); `make wasm` retries a failed npm ci.
PY := .venv/bin/python
BOARD ?= boards/esp32-devkitc-i2c.json
JOBS ?= 2

.PHONY: setup setup-site wasm test test-fast bench demo build firmware deploy clean

setup:
	@tools/setup.sh

setup-site:
	@tools/setup.sh --site

wasm:
	@tools/setup.sh --retry-wasm

test: setup
	$(PY) -m pytest -n $(JOBS) -q

bench: setup
	$(PY) -m tools.bench

demo: setup-site
	$(PY) -m tools.demo $(DEMO_ARGS)

build: setup-site
	$(PY) -m tools.build --board $(BOARD)

# the reader frozen into MicroPython for a "firmware": "frozen" board (tools/firmware.py, docs/install.md);
# FIRMWARE_ARGS=--dry-run prints the toolchain and the commands without building;
# PROFILE=production: flash encryption, secure boot v2, no REPL (burns eFuses: docs/security.md)
PROFILE ?= development
firmware: setup-site
	$(PY) -m tools.firmware build $(BOARD) --profile $(PROFILE) $(FIRMWARE_ARGS)

deploy: setup-site
	$(PY) -m tools.deploy --port $(PORT) --board $(BOARD) --reader $(READER) $(DEPLOY_ARGS)

clean:
	rm -rf build .pytest_cache
