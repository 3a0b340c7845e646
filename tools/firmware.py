"""`make firmware BOARD=boards/<file>.json`: MicroPython with the reader frozen in, for a board file
whose `"firmware"` is `"frozen"` (plain ESP32, ESP32-S3 without PSRAM).

    python -m tools.firmware build boards/esp32-devkitc-i2c.json [--dry-run] [--toolchain docker|idf]
        [--profile production]     # flash encryption, secure boot v2, NVS encryption, no REPL
    python -m tools.firmware check [boards/*.json]     # what CI can check without ESP-IDF
    python -m tools.firmware id boards/esp32-devkitc-i2c.json

The board definition (mpconfigboard.cmake/.h, sdkconfig.board, partitions.csv, manifest.py) lives in
boards/micropython/GRINDVAKT_<CHIP>/; MicroPython and ESP-IDF are pinned below. The build runs in
Espressif's `espressif/idf:<IDF>` Docker image where a Docker engine answers, else with a local
ESP-IDF of the pinned version (`IDF_PATH`, `idf.py` on PATH), else it says what to install and exits
2 having built nothing. MicroPython's source is a checkout of the pinned tag outside this repository
($MICROPY_DIR, default ~/.cache/grindvakt/micropython-<tag>, cloned when missing).

Output in build/firmware/<GRINDVAKT_...>/: firmware.bin (bootloader + partition table + app, one
image), micropython.bin, bootloader.bin, partition-table.bin, and manifest.json (MicroPython tag, IDF
version, build id, the frozen files and their hashes, each .bin with its flash offset and sha256).
The build id hashes the pinned versions, the board folder and every frozen source; the firmware
carries it as the frozen module `gv_build` (`gv_build.ID`), which tools.deploy reads over the REPL.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tools import boards, mpy

ROOT = mpy.ROOT
FIRMWARE = ROOT / "firmware"
BOARD_DEFS = ROOT / "boards" / "micropython"
OUT = ROOT / "build" / "firmware"

# Pinned: MicroPython 1.27 and 1.28 are built and tested by upstream with ESP-IDF 5.5.1.
MICROPYTHON_TAG = "v1.28.0"
IDF_VERSION = "v5.5.1"
IDF_IMAGE = f"espressif/idf:{IDF_VERSION}"
MICROPYTHON_GIT = "https://github.com/micropython/micropython.git"

# Which board definition a chip's frozen firmware is built from, and where its one image goes.
DEFS = {"esp32": {"name": "GRINDVAKT_ESP32", "offset": "0x1000"},
        "esp32s3": {"name": "GRINDVAKT_ESP32S3", "offset": "0x0"}}
DEF_FILES = ("mpconfigboard.cmake", "mpconfigboard.h", "sdkconfig.board", "partitions.csv", "manifest.py")

# The production profile (docs/security.md, "The production profile"): one more sdkconfig fragment
# and its own partition table (an nvs_keys partition, vfs encrypted), in the same board folder.
PROFILES = ("development", "production")
PRODUCTION_FILES = ("sdkconfig.production", "partitions-production.csv")
# What the production fragment must set, per chip (ESP-IDF v5.5 Kconfig names). The fragment may
# set more; each of these missing or set otherwise fails the check. Secure boot v2 (RSA-3072) on
# the ESP32 needs chip revision 3.0: the build then refuses to boot on older chips.
PRODUCTION_OPTIONS = {
    "common": {
        "CONFIG_SECURE_FLASH_ENC_ENABLED": "y",
        "CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE": "y",
        "CONFIG_SECURE_BOOT": "y",
        "CONFIG_SECURE_BOOT_V2_ENABLED": "y",
        "CONFIG_SECURE_SIGNED_APPS_RSA_SCHEME": "y",
        "CONFIG_SECURE_BOOT_BUILD_SIGNED_BINARIES": "y",
        "CONFIG_NVS_ENCRYPTION": "y",
        "CONFIG_NVS_SEC_KEY_PROTECT_USING_FLASH_ENC": "y",
        "CONFIG_ESP_WIFI_NVS_ENABLED": "n",
        "CONFIG_SECURE_BOOT_ALLOW_JTAG": "n",
        "CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_ENC": "n",
        "CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_CACHE": "n",
        "CONFIG_SECURE_INSECURE_ALLOW_DL_MODE": "n",
        "CONFIG_BOOTLOADER_LOG_LEVEL_WARN": "y",
    },
    "esp32": {"CONFIG_ESP32_REV_MIN_3": "y", "CONFIG_SECURE_DISABLE_ROM_DL_MODE": "y",
              "CONFIG_SECURE_FLASH_UART_BOOTLOADER_ALLOW_DEC": "n", "CONFIG_SECURE_BOOT_ALLOW_ROM_BASIC": "n"},
    "esp32s3": {"CONFIG_SECURE_ENABLE_SECURE_ROM_DL_MODE": "y", "CONFIG_SECURE_FLASH_ENCRYPTION_AES256": "y"},
}
# The compiled modules must load on the chip: bytecode for the Xtensa (windowed ABI) of the ESP32
# and ESP32-S3 alike, with 31-bit small ints as on a 32-bit port.
MPY_CROSS_FLAGS = {"esp32": ["-march=xtensawin", "-msmall-int-bits=31"],
                   "esp32s3": ["-march=xtensawin", "-msmall-int-bits=31"]}

# The LittleFS partition ("vfs") the allowlist needs for 100,000 cards beside the event log,
# lockouts and config: 2 MiB (docs/allowlist-format.md; `make bench` allowlist.capacity_cards_2mb
# measures it there, with 256 KB of .mpy files beside the cards that a frozen board does not have).
ALLOWLIST_LFS_BYTES = 2 * 1024 * 1024
PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_SIZE = 0x1000

# Modules the ESP32 port provides (built in, or frozen by its boards/manifest.py), v1.28. An
# import the firmware makes that is neither one of these nor a firmware/ module fails the check.
PORT_MODULES = {
    "array", "binascii", "builtins", "cmath", "collections", "cryptolib", "deflate", "errno", "esp",
    "esp32", "gc", "hashlib", "heapq", "io", "json", "machine", "math", "micropython", "network", "os",
    "platform", "random", "re", "select", "socket", "ssl", "struct", "sys", "time", "tls", "uctypes",
    "vfs", "websocket", "_thread", "_asyncio", "framebuf", "onewire", "btree", "espnow", "webrepl",
    # frozen by ports/esp32/boards/manifest.py
    "asyncio", "_boot", "inisetup", "flashbdev", "upysh", "mip", "ntptime", "neopixel", "dht",
    "ds18x20", "requests", "urequests", "webrepl_setup",
}
# u-prefixed names still resolve to the built-in module on the port
PORT_MODULES |= {"u" + m for m in ("binascii", "hashlib", "json", "os", "struct", "time", "socket", "ssl",
                                   "io", "errno", "select", "random", "re", "collections", "heapq", "asyncio")}


class FirmwareError(RuntimeError):
    code = 1


class NoToolchain(FirmwareError):
    code = 2


# ---------------------------------------------------------------- the board definition


def def_dir(chip: str) -> Path:
    if chip not in DEFS:
        raise FirmwareError(f"no frozen firmware for chip {chip!r} (have: {', '.join(sorted(DEFS))})")
    return BOARD_DEFS / DEFS[chip]["name"]


def board_and_def(board_path: str | Path) -> tuple[boards.Board, Path]:
    board = boards.load(board_path)
    if board.firmware != "frozen":
        raise FirmwareError(f"{board.path}: \"firmware\" is {board.firmware!r}: this board runs stock "
                            f"MicroPython with .mpy files (make deploy), not the frozen firmware")
    return board, def_dir(board.chip)


# ---------------------------------------------------------------- manifest.py, evaluated here


@dataclass
class Manifest:
    """What a board's manifest.py freezes: device path -> source file; port includes kept apart."""
    frozen: dict[str, Path] = field(default_factory=dict)
    includes: list[str] = field(default_factory=list)
    requires: list[str] = field(default_factory=list)


def read_manifest(path: Path, gen_dir: Path | None = None) -> Manifest:
    """Run manifest.py with MicroPython's manifest API (include/package/module/require) recording
    what it freezes. `$(PORT_DIR)`/`$(MPY_DIR)` includes are the port's (not evaluated: that needs
    MicroPython's source); `$(BOARD_DIR)` is the manifest's folder."""
    m = Manifest()
    here = path.parent

    def resolve(p: str) -> Path:
        p = p.replace("$(BOARD_DIR)", str(here))
        q = Path(p)
        return (q if q.is_absolute() else here / q).resolve()

    def include(p, **kw):
        if "$(PORT_DIR)" in p or "$(MPY_DIR)" in p or "$(MPY_LIB_DIR)" in p:
            m.includes.append(p)
            return
        raise FirmwareError(f"{path}: include({p!r}) of a project file is not supported here")

    def module(name, base_path=".", opt=None):
        src = resolve(base_path) / name
        if not src.is_file():
            raise FirmwareError(f"{path}: module({name!r}): {src} does not exist")
        m.frozen[name] = src

    def package(name, files=None, base_path=".", opt=None):
        base = resolve(base_path)
        top = base / name
        if not top.is_dir():
            raise FirmwareError(f"{path}: package({name!r}): {top} is not a folder")
        for f in sorted(top.rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            rel = f.relative_to(base).as_posix()
            if files is None or rel[len(name) + 1:] in files:
                m.frozen[rel] = f

    def require(name, **kw):
        m.requires.append(name)

    def unsupported(*a, **kw):
        raise FirmwareError(f"{path}: freeze()/freeze_as_*() are not used by this project's manifests")

    env = {"include": include, "module": module, "package": package, "require": require,
           "freeze": unsupported, "freeze_as_str": unsupported, "freeze_as_mpy": unsupported,
           "freeze_mpy": unsupported, "metadata": lambda **kw: None, "options": argparse.Namespace(),
           "__file__": str(path)}
    with _env("GV_FIRMWARE_GEN", str(gen_dir) if gen_dir else None):
        try:
            exec(compile(path.read_text(), str(path), "exec"), env)
        except SystemExit as e:
            raise FirmwareError(f"{path}: {e}") from None
    return m


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


# ---------------------------------------------------------------- the import graph


@dataclass
class ImportGraph:
    modules: dict[str, Path] = field(default_factory=dict)      # dotted name -> firmware file
    external: dict[str, list[str]] = field(default_factory=dict)  # name -> where (always imported)
    optional: dict[str, list[str]] = field(default_factory=dict)  # name -> where (inside try/except ImportError)


def _module_file(name: str, src: Path) -> Path | None:
    base = src.joinpath(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


class _Imports(ast.NodeVisitor):
    """Every import in a module, with whether it may fail: inside a try that catches ImportError,
    or the fallback in its handler."""

    def __init__(self):
        self.found: list[tuple[str, list[str], bool]] = []  # (module, from-names, guarded)
        self.guard = 0

    def visit_Try(self, node):
        catches = any(h.type is None or any(n in ast.unparse(h.type) for n in ("ImportError", "Exception"))
                      for h in node.handlers)
        self.guard += catches
        for n in node.body:
            self.visit(n)
        self.guard -= catches
        for h in node.handlers:  # a fallback import there runs only where the first one failed
            fallback = h.type is not None and "ImportError" in ast.unparse(h.type)
            self.guard += fallback
            for n in h.body:
                self.visit(n)
            self.guard -= fallback
        for n in node.orelse + node.finalbody:
            self.visit(n)

    visit_TryStar = visit_Try

    def visit_Import(self, node):
        for a in node.names:
            self.found.append((a.name, [], self.guard > 0))

    def visit_ImportFrom(self, node):
        if node.level:
            raise FirmwareError(f"relative import at line {node.lineno}: the firmware uses absolute imports")
        self.found.append((node.module or "", [a.name for a in node.names], self.guard > 0))


def import_graph(src: Path = FIRMWARE, roots: tuple[str, ...] = ("boot", "main")) -> ImportGraph:
    """Every firmware/ module reachable from boot.py and main.py by the imports in their source
    (in functions and branches too: anything the app can import), plus the modules it needs from
    the port."""
    g = ImportGraph()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in g.modules:
            continue
        f = _module_file(name, src)
        if f is None:
            continue
        g.modules[name] = f
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        v = _Imports()
        v.visit(ast.parse(f.read_text(), str(f)))
        where = f.relative_to(src).as_posix()
        for mod, names, guarded in v.found:
            targets = [mod] + [f"{mod}.{n}" for n in names if _module_file(f"{mod}.{n}", src)]
            for t in targets:
                if _module_file(t, src) is not None:
                    todo.append(t)
                elif t == mod:
                    top = mod.split(".")[0]
                    (g.optional if guarded else g.external).setdefault(top, []).append(where)
    return g


def module_path(name: str, f: Path, src: Path = FIRMWARE) -> str:
    return f.relative_to(src).as_posix()


# ---------------------------------------------------------------- the partition table


@dataclass
class Partition:
    name: str
    type: str
    subtype: str
    offset: int
    size: int
    flags: tuple[str, ...] = ()


def _num(s: str) -> int:
    s = s.strip()
    mult = 1
    if s[-1:] in "KkMm" and s[-1:]:
        mult = 1024 if s[-1] in "Kk" else 1024 * 1024
        s = s[:-1]
    return int(s, 0) * mult


def read_partitions(path: Path) -> list[Partition]:
    """ESP-IDF's partition CSV, with offsets left empty filled in as gen_esp32part.py does
    (apps 64 KiB aligned, data 4 KiB)."""
    out: list[Partition] = []
    nxt = PARTITION_TABLE_OFFSET + PARTITION_TABLE_SIZE
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 5:
            raise FirmwareError(f"{path}:{n}: want name, type, subtype, offset, size")
        name, typ, sub, off, size = cols[:5]
        align = 0x10000 if typ == "app" else 0x1000
        o = _num(off) if off else -(-nxt // align) * align
        if o % align:
            raise FirmwareError(f"{path}:{n}: {name} at {o:#x} is not {align:#x}-aligned")
        flags = tuple(f.strip() for f in (cols[5] if len(cols) > 5 else "").split(":") if f.strip())
        part = Partition(name, typ, sub, o, _num(size), flags)
        out.append(part)
        nxt = part.offset + part.size
    return out


def check_partitions(path: Path, flash_mb: int, lfs_bytes: int = ALLOWLIST_LFS_BYTES) -> list[str]:
    """Problems with a partition table for a flash of flash_mb MB (empty: fine)."""
    problems = []
    try:
        parts = read_partitions(path)
    except (FirmwareError, ValueError) as e:
        return [str(e)]
    flash = flash_mb * 1024 * 1024
    end_prev, prev = PARTITION_TABLE_OFFSET + PARTITION_TABLE_SIZE, "the partition table"
    for p in sorted(parts, key=lambda p: p.offset):
        if p.offset < end_prev:
            problems.append(f"{p.name} at {p.offset:#x} overlaps {prev} (ends at {end_prev:#x})")
        if p.offset + p.size > flash:
            problems.append(f"{p.name} ends at {p.offset + p.size:#x}, past the end of {flash_mb} MB flash "
                            f"({flash:#x})")
        end_prev, prev = max(end_prev, p.offset + p.size), p.name
    apps = [p for p in parts if p.type == "app"]
    if not apps:
        problems.append("no app partition for the firmware")
    vfs = [p for p in parts if p.name == "vfs"]
    if not vfs:
        problems.append('no "vfs" partition: the port mounts LittleFS from the partition named vfs')
    elif vfs[0].type != "data":
        problems.append("vfs is not a data partition")
    elif vfs[0].size < lfs_bytes:
        problems.append(f"vfs is {vfs[0].size:,} bytes: the allowlist needs {lfs_bytes:,} for 100,000 cards")
    return problems


# ---------------------------------------------------------------- build id, staging


def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise FirmwareError(f"unknown profile {profile!r} (have: {', '.join(PROFILES)})")
    return profile


def partitions_file(def_path: Path, profile: str = "development") -> Path:
    return def_path / ("partitions-production.csv" if check_profile(profile) == "production" else "partitions.csv")


def read_fragment(path: Path) -> dict[str, str]:
    """An sdkconfig fragment: CONFIG_X=value lines, and `# CONFIG_X is not set` as "n"."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        m = re.fullmatch(r"# (CONFIG_\w+) is not set", line)
        if m:
            out[m.group(1)] = "n"
        elif line and not line.startswith("#"):
            k, sep, v = line.partition("=")
            if not sep or not k.startswith("CONFIG_"):
                raise FirmwareError(f"{path}: not an sdkconfig line: {line!r}")
            out[k.strip()] = v.strip()
    return out


def check_production(def_path: Path, chip: str) -> list[str]:
    """The production fragment sets every option PRODUCTION_OPTIONS names for the chip, and the
    production partition table encrypts vfs, has an encrypted nvs_keys partition and leaves nvs
    to NVS encryption (an nvs partition must not carry the flag)."""
    problems = [f"{def_path.name}/{f} is missing" for f in PRODUCTION_FILES if not (def_path / f).is_file()]
    if problems:
        return problems
    frag = read_fragment(def_path / "sdkconfig.production")
    for k, v in {**PRODUCTION_OPTIONS["common"], **PRODUCTION_OPTIONS.get(chip, {})}.items():
        got = frag.get(k, "n")
        if got != v:
            problems.append(f"{def_path.name}/sdkconfig.production: {k} is {got!r}, production needs {v!r}")
    parts = {p.name: p for p in read_partitions(def_path / "partitions-production.csv")}
    if "encrypted" not in getattr(parts.get("vfs"), "flags", ()):
        problems.append(f"{def_path.name}/partitions-production.csv: vfs is not flagged encrypted "
                        f"(data partitions are stored in plain text otherwise)")
    keys = [p for p in parts.values() if p.subtype == "nvs_keys"]
    if not keys or "encrypted" not in keys[0].flags:
        problems.append(f"{def_path.name}/partitions-production.csv: NVS encryption needs an nvs_keys "
                        f"partition flagged encrypted")
    if "encrypted" in getattr(parts.get("nvs"), "flags", ("encrypted",)):
        problems.append(f"{def_path.name}/partitions-production.csv: nvs must exist and not be flagged "
                        f"encrypted (NVS encryption is its own scheme)")
    return problems


def frozen_set(def_path: Path, gen_dir: Path | None = None) -> dict[str, Path]:
    """Device path -> source of everything the manifest freezes from this project (gv_build.py,
    the generated build id module, left out: it is the hash's output)."""
    with tempfile.TemporaryDirectory() as d:
        gen = gen_dir or Path(d)
        if not (gen / "gv_build.py").exists():
            (gen / "gv_build.py").write_text("ID = None\n")
        frozen = read_manifest(def_path / "manifest.py", gen).frozen
    frozen.pop("gv_build.py", None)
    return frozen


def build_id(def_path: Path, tag: str = MICROPYTHON_TAG, idf: str = IDF_VERSION,
             profile: str = "development") -> str:
    """Hash of the pinned versions, the board folder's files and every frozen source: the same
    inputs give the same id on any machine, any change to one of them a new id. The production
    profile hashes its name and its two files too: never the id of a development build."""
    h = hashlib.sha256()
    h.update(f"micropython {tag}\nidf {idf}\nboard {def_path.name}\n".encode())
    if check_profile(profile) != "development":
        h.update(f"profile {profile}\n".encode())
    for name in DEF_FILES + (PRODUCTION_FILES if profile == "production" else ()):
        data = (def_path / name).read_bytes()
        h.update(f"def {name} {len(data)}\n".encode() + data)
    for dev, src in sorted(frozen_set(def_path).items()):
        data = src.read_bytes()
        h.update(f"frozen {dev} {len(data)}\n".encode() + data)
    return h.hexdigest()[:16]


def gv_build_source(def_path: Path, bid: str, profile: str = "development") -> str:
    return (f"# Written by tools/firmware.py for this firmware build; frozen in, read by tools.deploy\n"
            f"# (ID) and by gv.profile (PROFILE).\n"
            f"ID = {bid!r}\nBOARD = {def_path.name!r}\nMICROPYTHON = {MICROPYTHON_TAG!r}\n"
            f"IDF = {IDF_VERSION!r}\nPROFILE = {profile!r}\n")


def stage(def_path: Path, dest: Path, profile: str = "development") -> dict[str, Path]:
    """The frozen modules as the firmware holds them (and gv_build.py) in dest: what a ROMFS image
    of the reader is built from for the virtual board. Returns device path -> file in dest."""
    out = {}
    for dev, src in sorted(frozen_set(def_path).items()):
        to = dest / dev
        to.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, to)
        out[dev] = to
    (dest / "gv_build.py").write_text(gv_build_source(def_path, build_id(def_path, profile=profile), profile))
    out["gv_build.py"] = dest / "gv_build.py"
    return out


# ---------------------------------------------------------------- CI checks


def compile_frozen(def_path: Path, chip: str) -> list[str]:
    """mpy-cross every frozen module for the chip; the refusals."""
    from concurrent.futures import ThreadPoolExecutor

    with tempfile.TemporaryDirectory() as d:
        def one(item):
            i, (dev, src) = item
            p = subprocess.run([mpy.mpy_cross_bin(), *MPY_CROSS_FLAGS[chip], "-s", dev, "-o",
                                str(Path(d) / f"{i}.mpy"), str(src)], capture_output=True, text=True)
            return f"mpy-cross {' '.join(MPY_CROSS_FLAGS[chip])} refused {dev}: {p.stderr.strip()}" if p.returncode else None

        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(one, enumerate(sorted(frozen_set(def_path).items()))))
    return [p for p in found if p]


def check_imports(def_path: Path, src: Path = FIRMWARE) -> list[str]:
    """Every module the app can import is frozen or comes with the port."""
    problems = []
    frozen = frozen_set(def_path)
    g = import_graph(src)
    for name, f in sorted(g.modules.items()):
        dev = module_path(name, f, src)
        if dev not in frozen:
            problems.append(f"{dev} ({name}) is imported by the app but not frozen by {def_path.name}/manifest.py")
    for name, where in sorted(g.external.items()):
        if name not in PORT_MODULES:
            problems.append(f"{name} (imported by {', '.join(sorted(set(where)))}) is neither a firmware "
                            f"module nor one the ESP32 port provides")
    return problems


def check_board(board_path: str | Path) -> list[str]:
    """Every CI check for one frozen board file: the list of problems (empty: it passes)."""
    board, d = board_and_def(board_path)
    problems = [f"{d.name}/{f} is missing" for f in DEF_FILES if not (d / f).is_file()]
    if problems:
        return problems
    problems += check_imports(d)
    problems += [f"{d.name}/partitions.csv for {board.path.name} ({board.data['flash_mb']} MB): {p}"
                 for p in check_partitions(d / "partitions.csv", board.data["flash_mb"])]
    problems += check_production(d, board.chip)
    if not problems:
        problems += [f"{d.name}/partitions-production.csv for {board.path.name}: {p}"
                     for p in check_partitions(d / "partitions-production.csv", board.data["flash_mb"])]
    problems += compile_frozen(d, board.chip)
    return problems


# ---------------------------------------------------------------- toolchain and commands


@dataclass
class Toolchain:
    kind: str  # "docker" or "idf"
    detail: str


def docker_engine(timeout: float = 15) -> str | None:
    """The Docker engine's version when one answers, else None (a client without an engine too)."""
    exe = shutil.which("docker")
    if not exe:
        return None
    try:
        p = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                           timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None
    v = p.stdout.strip()
    return v if p.returncode == 0 and v and "error" not in v.lower() else None


def idf_version(idf_path: Path) -> str | None:
    """v<major>.<minor>.<patch> of an ESP-IDF tree (tools/cmake/version.cmake), or None."""
    try:
        text = (idf_path / "tools" / "cmake" / "version.cmake").read_text()
    except OSError:
        return None
    v = {k: re.search(rf"IDF_VERSION_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")}
    if not all(v.values()):
        return None
    return "v" + ".".join(v[k].group(1) for k in ("MAJOR", "MINOR", "PATCH"))


INSTALL_HELP = f"""no toolchain to build the firmware with: no Docker engine answers and IDF_PATH is not set.
Install one of:
  - Docker Engine (https://docs.docker.com/engine/install/), then `docker pull {IDF_IMAGE}`
    (the build runs in Espressif's image at the pinned version: reproducible);
  - ESP-IDF {IDF_VERSION} (https://docs.espressif.com/projects/esp-idf/en/{IDF_VERSION}/esp32/get-started/),
    e.g. `git clone -b {IDF_VERSION} --recursive https://github.com/espressif/esp-idf ~/esp/esp-idf &&
    ~/esp/esp-idf/install.sh esp32,esp32s3 && . ~/esp/esp-idf/export.sh` (sets IDF_PATH, puts idf.py on PATH).
Then rerun `make firmware BOARD=...`. Nothing was built."""


def detect(prefer: str | None = None, env: dict | None = None) -> Toolchain:
    env = os.environ if env is None else env
    if prefer in (None, "docker"):
        v = docker_engine()
        if v:
            return Toolchain("docker", f"Docker engine {v}, image {IDF_IMAGE}")
        if prefer == "docker":
            raise NoToolchain(f"--toolchain docker: no Docker engine answers (`docker info` fails).\n{INSTALL_HELP}")
    idf = env.get("IDF_PATH")
    if prefer in (None, "idf") and idf:
        v = idf_version(Path(idf))
        if v is None:
            raise NoToolchain(f"IDF_PATH={idf} is not an ESP-IDF tree (no tools/cmake/version.cmake)")
        if v != IDF_VERSION:
            raise NoToolchain(f"IDF_PATH={idf} is ESP-IDF {v}; this firmware is pinned to {IDF_VERSION} "
                              f"(MicroPython {MICROPYTHON_TAG}): install that version, or use Docker")
        if not shutil.which("idf.py", path=env.get("PATH")):
            raise NoToolchain(f"IDF_PATH={idf} is ESP-IDF {v} but idf.py is not on PATH: run `. {idf}/export.sh`")
        return Toolchain("idf", f"ESP-IDF {v} at {idf}")
    raise NoToolchain(INSTALL_HELP)


def micropython_dir(env: dict | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("MICROPY_DIR"):
        return Path(env["MICROPY_DIR"]).resolve()
    return Path(env.get("HOME", "~")).expanduser() / ".cache" / "grindvakt" / f"micropython-{MICROPYTHON_TAG}"


def checkout_tag(mp_dir: Path) -> str | None:
    if not (mp_dir / ".git").exists():
        return None
    p = subprocess.run(["git", "-C", str(mp_dir), "describe", "--tags", "--exact-match", "HEAD"],
                       capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else "not at a tag"


def out_dir(def_path: Path, profile: str = "development", out_root: Path = OUT) -> Path:
    """build/firmware/GRINDVAKT_<CHIP> (development) or GRINDVAKT_<CHIP>-production: its own
    ESP-IDF build folder, so an sdkconfig of one profile never leaks into the other."""
    return out_root / (def_path.name + ("-production" if check_profile(profile) == "production" else ""))


SIGNING_KEY_ENV = "GV_SECURE_BOOT_KEY"
SIGNING_KEY_HELP = (f"the production profile signs the bootloader and app for secure boot v2: set {SIGNING_KEY_ENV} "
                    f"to an RSA-3072 private key kept off this repository, made once with\n"
                    f"  espsecure generate-signing-key --version 2 --scheme rsa3072 ~/grindvakt-secure-boot.pem\n"
                    f"(keep it safe and backed up: losing it means no further firmware for boards signed with it)")


def signing_key(env: dict | None = None, required: bool = True) -> Path | None:
    env = os.environ if env is None else env
    k = env.get(SIGNING_KEY_ENV)
    if not k:
        if required:
            raise NoToolchain(f"{SIGNING_KEY_ENV} is not set: {SIGNING_KEY_HELP}")
        return None
    p = Path(k).expanduser().resolve()
    if required and not p.is_file():
        raise NoToolchain(f"{SIGNING_KEY_ENV}={k}: no such file. {SIGNING_KEY_HELP}")
    if p.is_relative_to(ROOT):
        raise FirmwareError(f"{SIGNING_KEY_ENV}={k} is inside this repository: keep the signing key outside it")
    return p


def commands(tc: Toolchain, def_path: Path, out: Path, mp_dir: Path, have_checkout: bool,
             profile: str = "development", key: Path | None = None) -> list[list[str]]:
    """The exact command lines a build runs, in order."""
    cmds: list[list[str]] = []
    penv = [f"GV_FIRMWARE_PROFILE={profile}"] if profile != "development" else []
    if not have_checkout:
        cmds.append(["git", "clone", "--depth", "1", "--branch", MICROPYTHON_TAG, MICROPYTHON_GIT, str(mp_dir)])
    idf_build = out / "idf"
    make = ["make", "-C", "ports/esp32", f"BOARD={def_path.name}", f"BOARD_DIR={def_path}", f"BUILD={idf_build}"]
    steps = [["make", "-C", "mpy-cross"], make + ["submodules"], make]
    if tc.kind == "docker":
        # the repo and the checkout mounted at their own paths, so every path above holds inside;
        # files come out owned by the caller, not root
        extra = [a for e in penv for a in ("-e", e)] + (["-v", f"{key}:{key}:ro"] if key else [])
        run = ["docker", "run", "--rm", "-u", f"{os.getuid()}:{os.getgid()}", "-e", "HOME=/tmp",
               "-e", f"GV_FIRMWARE_GEN={out}", *extra, "-v", f"{ROOT}:{ROOT}", "-v", f"{mp_dir}:{mp_dir}",
               "-w", str(mp_dir), IDF_IMAGE, "bash", "-c", " && ".join(shlex.join(s) for s in steps)]
        cmds.append(run)
    else:
        cmds += [["env", f"GV_FIRMWARE_GEN={out}", *penv, *s] if s is make else s for s in steps]
    return cmds


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def write_manifest(board: boards.Board, def_path: Path, out: Path, bid: str, tc: Toolchain,
                   profile: str = "development") -> dict:
    idf_build = out / "idf"
    bins = {"firmware.bin": (idf_build / "firmware.bin", DEFS[board.chip]["offset"]),
            "micropython.bin": (idf_build / "micropython.bin", "0x10000"),
            "bootloader.bin": (idf_build / "bootloader" / "bootloader.bin", DEFS[board.chip]["offset"]),
            "partition-table.bin": (idf_build / "partition_table" / "partition-table.bin", "0x8000")}
    files = {}
    for name, (src, offset) in bins.items():
        if not src.is_file():
            raise FirmwareError(f"the build did not produce {src}")
        shutil.copyfile(src, out / name)
        files[name] = {"offset": offset, "sha256": _sha(out / name), "size": (out / name).stat().st_size}
    app = [p for p in read_partitions(partitions_file(def_path, profile)) if p.type == "app"][0]
    if files["micropython.bin"]["size"] > app.size:
        raise FirmwareError(f"micropython.bin is {files['micropython.bin']['size']:,} bytes, the app "
                            f"partition {app.size:,}")
    m = {"board": def_path.name, "chip": board.chip, "micropython": MICROPYTHON_TAG, "idf": IDF_VERSION,
         "build_id": bid, "profile": profile, "toolchain": tc.detail, "flash_offset": DEFS[board.chip]["offset"],
         "partitions": partitions_file(def_path, profile).name,
         "frozen": {dev: _sha(src) for dev, src in sorted(frozen_set(def_path).items())},
         "bins": files}
    (out / "manifest.json").write_text(json.dumps(m, indent=1) + "\n")
    return m


def build(board_path: str | Path, *, dry_run: bool = False, prefer: str | None = None,
          out_root: Path = OUT, say=print, profile: str = "development") -> dict | None:
    board, d = board_and_def(board_path)
    bid = build_id(d, profile=check_profile(profile))
    out = out_dir(d, profile, out_root)
    key = signing_key(required=not dry_run) if profile == "production" else None
    try:
        tc = detect(prefer)
    except NoToolchain as e:
        if not (dry_run and prefer):
            raise
        # a dry run for a named toolchain shows its commands even where it is missing
        say(f"firmware: (dry run) {prefer} is not usable here: {str(e).splitlines()[0]}")
        tc = Toolchain(prefer, f"{prefer} (not available here)")
    mp_dir = micropython_dir()
    tag = checkout_tag(mp_dir)
    if tag not in (None, MICROPYTHON_TAG):
        raise FirmwareError(f"{mp_dir} is {tag}, not {MICROPYTHON_TAG}: `git -C {mp_dir} fetch --depth 1 origin "
                            f"tag {MICROPYTHON_TAG} && git -C {mp_dir} checkout {MICROPYTHON_TAG}`, or set MICROPY_DIR")
    problems = check_board(board_path)  # after the cheap refusals above, before anything runs
    if problems:
        raise FirmwareError("the firmware checks fail:\n  " + "\n  ".join(problems))
    if profile == "production" and key is None:
        key = Path(f"${SIGNING_KEY_ENV}")  # a dry run without the key: shown as the variable
        say(f"firmware: (dry run) {SIGNING_KEY_ENV} is not set; a real build refuses to start without it")
    cmds = commands(tc, d, out, mp_dir, tag is not None, profile, key)
    say(f"firmware: {d.name} for {board.name}: MicroPython {MICROPYTHON_TAG}, ESP-IDF {IDF_VERSION}, "
        f"profile {profile}, build id {bid}; toolchain: {tc.detail}")
    if profile == "production":
        say("  PRODUCTION: the first boot of this image burns eFuses for good (flash encryption in release "
            "mode, secure boot v2, JTAG and UART download mode off): docs/security.md")
    say(f"  (run in {mp_dir}, the MicroPython checkout)")
    for c in cmds:
        say("  $ " + shlex.join(c))
    if dry_run:
        return None
    out.mkdir(parents=True, exist_ok=True)
    (out / "gv_build.py").write_text(gv_build_source(d, bid, profile))
    if key is not None:  # read by mpconfigboard.cmake with sdkconfig.production
        (out / "sdkconfig.signing").write_text(f'CONFIG_SECURE_BOOT_SIGNING_KEY="{key}"\n')
    for c in cmds:
        p = subprocess.run(c, cwd=mp_dir if c[0] != "git" else None)
        if p.returncode:
            raise FirmwareError(f"failed ({p.returncode}): {shlex.join(c)}")
    m = write_manifest(board, d, out, bid, tc, profile)
    say(f"firmware: wrote {out}/firmware.bin ({m['bins']['firmware.bin']['size']:,} bytes, flash at "
        f"{m['flash_offset']}) and manifest.json")
    return m


def built_manifest(board_path: str | Path, out_root: Path = OUT, profile: str = "development") -> dict | None:
    """build/firmware/<def>[-production]/manifest.json of the last `make firmware` for this board, if any."""
    _, d = board_and_def(board_path)
    p = out_dir(d, profile, out_root) / "manifest.json"
    return json.loads(p.read_text()) if p.exists() else None


# ---------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.firmware", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the frozen firmware for a board file")
    b.add_argument("board")
    b.add_argument("--dry-run", action="store_true", help="print the toolchain and the commands, build nothing")
    b.add_argument("--toolchain", choices=["docker", "idf"], help="default: Docker if an engine answers, else IDF_PATH")
    b.add_argument("--out", default=str(OUT))
    b.add_argument("--profile", choices=PROFILES, default="development",
                   help="production: flash encryption (release), secure boot v2, NVS encryption, no REPL "
                        "(burns eFuses at first boot: docs/security.md)")
    c = sub.add_parser("check", help="the checks CI runs without ESP-IDF (default: every frozen board file)")
    c.add_argument("boards", nargs="*")
    i = sub.add_parser("id", help="print the build id the current sources give")
    i.add_argument("board")
    i.add_argument("--profile", choices=PROFILES, default="development")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "build":
            build(args.board, dry_run=args.dry_run, prefer=args.toolchain, out_root=Path(args.out),
                  profile=args.profile)
        elif args.cmd == "id":
            print(build_id(board_and_def(args.board)[1], profile=args.profile))
        else:
            files = args.boards or [str(p) for p in sorted((ROOT / "boards").glob("*.json"))
                                    if boards.load(p).firmware == "frozen"]
            bad = 0
            for f in files:
                problems = check_board(f)
                bad += bool(problems)
                print(f"{'ok' if not problems else 'FAILED'} {f}" + "".join(f"\n  {p}" for p in problems))
            return 1 if bad else 0
    except (FirmwareError, boards.BoardError) as e:
        print(f"firmware: {e}", file=sys.stderr)
        return getattr(e, "code", 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
