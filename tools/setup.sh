#!/usr/bin/env bash
# make setup: the venv with every pinned dependency, plus Debian's mosquitto, socat and (for the
# console's browser tests) chromium + chromium-driver, and the 32-bit MicroPython (npm) for the
# 32-bit heap checks.
# Idempotent: does only what is missing.
#   --site       only what the demo, build, firmware and deploy need (make setup-site): no
#                chromium, no npm: a site host without internet never waits on npm's registry
#   --retry-wasm try the npm install again after it failed (make wasm)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
site=0
retry_wasm=0
for a in "$@"; do
  case "$a" in
    --site) site=1 ;;
    --retry-wasm) retry_wasm=1 ;;
    *) echo "setup: unknown option $a (--site, --retry-wasm)" >&2; exit 2 ;;
  esac
done

need_deb=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_deb+=(mosquitto)
command -v socat >/dev/null 2>&1 || need_deb+=(socat)
# the console's browser tests: Debian's Chromium and its driver (never a downloaded browser)
need_browser=()
[ "$site" = 1 ] || command -v chromium >/dev/null 2>&1 || need_browser+=(chromium)
[ "$site" = 1 ] || command -v chromedriver >/dev/null 2>&1 || need_browser+=(chromium-driver)
if [ ${#need_browser[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    need_deb+=("${need_browser[@]}")
  else
    echo "setup: ${need_browser[*]} missing: the browser tests will be skipped (sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
if [ ${#need_deb[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing Debian packages: ${need_deb[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_deb[@]}" >/dev/null
  else
    echo "setup: please install ${need_deb[*]} (e.g. sudo apt-get install ${need_deb[*]}); they are needed by the tests and the demo" >&2
    exit 1
  fi
fi

stamp=.venv/.setup-done
if [ ! -f "$stamp" ] || [ requirements.txt -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  echo "setup: installing pinned Python dependencies into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
  touch "$stamp"
fi
# The 32-bit MicroPython (WebAssembly, npm) for the heap figures and heap_lock proofs on 32-bit:
# where Node is there; the bench and the test skip with the reason where it is not. Only they use
# it, so a failed npm ci (no internet, a TLS-intercepting proxy) is said once and remembered in
# $wasm_failed: the next make test does not wait on npm's registry again (make wasm retries).
wasm_failed=.venv/wasm-npm-failed
[ "$retry_wasm" = 1 ] && rm -f "$wasm_failed"
if [ "$site" = 0 ] && [ ! -f "$wasm_failed" ] && command -v node >/dev/null 2>&1 \
    && command -v npm >/dev/null 2>&1 \
    && [ ! -f tools/wasm/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs ]; then
  echo "setup: installing the 32-bit MicroPython (npm ci in tools/wasm)"
  if ! npm ci --no-audit --no-fund --prefix tools/wasm >"$wasm_failed" 2>&1; then
    echo "setup: npm ci in tools/wasm failed (npm's output: $wasm_failed): skipped the 32-bit" \
         "MicroPython, which only the 32-bit heap checks use (tests/test_heap32.py, make bench's" \
         "heap32 figures: they skip); everything else is set up. Retry with 'make wasm' once npm" \
         "can reach its registry (npm config: registry, proxy, cafile)." >&2
  else
    rm -f "$wasm_failed"
  fi
fi
.venv/bin/micropython -c "import sys; assert sys.implementation.version[:2] >= (1, 29), sys.implementation" \
  || { echo "setup: the unix-port micropython is not v1.29+" >&2; exit 1; }
