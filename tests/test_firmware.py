"""`make firmware` without ESP-IDF: the checks CI can run (import graph vs manifest, mpy-cross for
the chip, partition tables, build id) and the toolchain detection with the exact commands."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import boards, firmware

ROOT = Path(__file__).resolve().parent.parent
FROZEN_BOARDS = [p for p in sorted((ROOT / "boards").glob("*.json")) if boards.load(p).firmware == "frozen"]


def test_every_chip_with_a_frozen_board_has_a_definition(tmp_path):
    assert {boards.load(p).chip for p in FROZEN_BOARDS} == set(firmware.DEFS)
    for chip in firmware.DEFS:
        d = firmware.def_dir(chip)
        assert all((d / f).is_file() for f in firmware.DEF_FILES), d
        with pytest.raises(firmware.FirmwareError, match="gv_build.py does not exist"):
            firmware.read_manifest(d / "manifest.py", Path("/nonexistent"))
        with pytest.raises(firmware.FirmwareError, match="GV_FIRMWARE_GEN is not set: build this board with `make firmware`"):
            firmware.read_manifest(d / "manifest.py")
        m = firmware.read_manifest(d / "manifest.py", firmware.stage(d, tmp_path / chip) and tmp_path / chip)
        assert m.includes == ["$(PORT_DIR)/boards/manifest.py"] and m.frozen["gv_build.py"] == tmp_path / chip / "gv_build.py"


@pytest.mark.parametrize("chip", sorted(firmware.DEFS))
def test_the_manifest_freezes_what_the_app_imports_and_it_compiles_for_the_chip(chip):
    d = firmware.def_dir(chip)
    assert firmware.check_imports(d) == []
    assert firmware.compile_frozen(d, chip) == []
    frozen = firmware.frozen_set(d)
    graph = firmware.import_graph()
    # the graph really is the app's: boot/main, the gate, the store, the sync engine and their packages
    for name in ("boot", "main", "gv.app", "gv.gate.runner", "gv.allowlist.store", "gv.sync.engine", "gv.sync"):
        assert name in graph.modules
    assert {"boot.py", "main.py", "gv/__init__.py", "gv/sync/mqtt.py"} <= set(frozen)
    assert "machine" in graph.external and "cryptography" in graph.optional  # the CPython fallback


@pytest.mark.parametrize("board", FROZEN_BOARDS, ids=lambda p: p.stem)
def test_the_partition_table_fits_the_board_and_holds_the_allowlist(board):
    b = boards.load(board)
    table = firmware.def_dir(b.chip) / "partitions.csv"
    assert firmware.check_partitions(table, b.data["flash_mb"]) == []
    vfs = [p for p in firmware.read_partitions(table) if p.name == "vfs"][0]
    assert vfs.size >= firmware.ALLOWLIST_LFS_BYTES
    # the virtual board's LittleFS is the size the board's table gives
    from tools.virtual_board.image import blocks_for
    assert blocks_for(b.data) * 4096 == vfs.size


def test_partition_problems_are_named(tmp_path):
    t = tmp_path / "p.csv"
    t.write_text("nvs, data, nvs, 0x9000, 0x6000,\nfactory, app, factory, 0x10000, 0x1F0000,\n"
                 "vfs, data, fat, 0x200000, 0x200000,\n")
    assert firmware.check_partitions(t, 4) == []
    assert any("past the end of 2 MB flash" in p for p in firmware.check_partitions(t, 2))
    s3 = firmware.def_dir("esp32s3") / "partitions.csv"
    assert any("past the end of 4 MB" in p for p in firmware.check_partitions(s3, 4))  # a 4 MB S3 module
    t.write_text("nvs, data, nvs, 0x9000, 0x6000,\nfactory, app, factory, 0x10000, 0x200000,\n"
                 "vfs, data, fat, 0x200000, 0x100000,\n")
    problems = firmware.check_partitions(t, 4)
    assert any("vfs at 0x200000 overlaps factory" in p for p in problems)
    assert any("the allowlist needs 2,097,152" in p for p in problems)
    t.write_text("nvs, data, nvs, , 0x6000,\nfactory, app, factory, , 1M,\nstore, data, fat, , 2M,\n")
    parts = firmware.read_partitions(t)
    assert [hex(p.offset) for p in parts] == ["0x9000", "0x10000", "0x110000"]  # filled in, aligned
    assert any('no "vfs" partition' in p for p in firmware.check_partitions(t, 4))


def _copy_project(tmp_path: Path) -> Path:
    """A copy of the board folders and firmware/ laid out as in the repo (the manifest finds the
    firmware three folders up)."""
    root = tmp_path / "proj"
    shutil.copytree(firmware.BOARD_DEFS, root / "boards" / "micropython")
    shutil.copytree(firmware.FIRMWARE, root / "firmware", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_an_import_the_manifest_does_not_freeze_fails_the_check(tmp_path):
    root = _copy_project(tmp_path)
    d, src = root / "boards" / "micropython" / "GRINDVAKT_ESP32", root / "firmware"
    assert firmware.check_imports(d, src) == []
    (src / "extra.py").write_text("import nosuchmodule\n")
    app = src / "gv" / "app.py"
    app.write_text(app.read_text() + "\ndef _later():\n    import extra\n")  # imported in a function
    problems = firmware.check_imports(d, src)
    assert any(p.startswith("extra.py (extra) is imported by the app but not frozen") for p in problems), problems
    assert any(p.startswith("nosuchmodule (imported by extra.py) is neither") for p in problems), problems
    (src / "gv" / "broken.py").write_text("def f(:\n")
    assert any("refused gv/broken.py" in p for p in firmware.compile_frozen(d, "esp32"))


def test_the_build_id_is_reproducible_and_follows_every_input(tmp_path):
    d = firmware.def_dir("esp32")
    a = firmware.build_id(d)
    assert a == firmware.build_id(d) and len(a) == 16
    root = _copy_project(tmp_path)
    d2 = root / "boards" / "micropython" / "GRINDVAKT_ESP32"
    assert firmware.build_id(d2) == a  # another checkout in another folder: the same id
    assert firmware.build_id(firmware.def_dir("esp32s3")) != a
    assert firmware.build_id(d2, tag="v1.27.0") != a and firmware.build_id(d2, idf="v5.4.2") != a
    mod = root / "firmware" / "gv" / "gate" / "core.py"
    mod.write_text(mod.read_text() + "\n# one more line\n")
    b = firmware.build_id(d2)
    assert b != a
    (d2 / "partitions.csv").write_text((d2 / "partitions.csv").read_text() + "\n")
    assert firmware.build_id(d2) not in (a, b)
    staged = firmware.stage(d, tmp_path / "stage")
    assert "gv_build.py" in staged and f"ID = {a!r}" in staged["gv_build.py"].read_text()


def _fake_bin(tmp_path: Path, name: str, script: str) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    f = bindir / name
    f.write_text(f"#!{sys.executable}\n" + script)
    f.chmod(0o755)
    return bindir


def _run_cli(args, env):
    return subprocess.run([sys.executable, "-m", "tools.firmware", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _env(tmp_path, path, **extra):
    e = {k: v for k, v in os.environ.items() if k not in ("IDF_PATH", "MICROPY_DIR")}
    e.update(PATH=path, HOME=str(tmp_path / "home"), **extra)
    return e


def test_no_toolchain_says_what_to_install_and_builds_nothing(tmp_path):
    # a docker client without an engine, as on this machine
    bindir = _fake_bin(tmp_path, "docker", "import sys\nprint('Cannot connect to the Docker daemon', file=sys.stderr)\n"
                                           "sys.exit(1)\n")
    env = _env(tmp_path, f"{bindir}:/usr/bin:/bin")
    out = _run_cli(["build", "boards/esp32-devkitc-i2c.json", "--out", str(tmp_path / "out")], env)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "no Docker engine answers and IDF_PATH is not set" in out.stderr
    assert "docker pull espressif/idf:v5.5.1" in out.stderr and "ESP-IDF v5.5.1" in out.stderr
    assert "Nothing was built" in out.stderr and not (tmp_path / "out").exists()
    assert not (tmp_path / "home" / ".cache").exists()  # nor was MicroPython cloned
    stock = _run_cli(["build", "boards/esp32-wrover-i2c.json"], env)
    assert stock.returncode == 1 and "runs stock MicroPython with .mpy files" in stock.stderr


def test_a_local_esp_idf_must_be_the_pinned_version(tmp_path):
    idf = tmp_path / "esp-idf"
    (idf / "tools" / "cmake").mkdir(parents=True)
    ver = idf / "tools" / "cmake" / "version.cmake"
    ver.write_text("set(IDF_VERSION_MAJOR 5)\nset(IDF_VERSION_MINOR 4)\nset(IDF_VERSION_PATCH 2)\n")
    bindir = _fake_bin(tmp_path, "idf.py", "print('ESP-IDF v5.5.1')\n")
    env = {"IDF_PATH": str(idf), "PATH": f"{bindir}:/usr/bin:/bin"}
    with pytest.raises(firmware.NoToolchain, match="is ESP-IDF v5.4.2; this firmware is pinned to v5.5.1"):
        firmware.detect("idf", env)
    ver.write_text("set(IDF_VERSION_MAJOR 5)\nset(IDF_VERSION_MINOR 5)\nset(IDF_VERSION_PATCH 1)\n")
    assert firmware.detect("idf", env).kind == "idf"
    with pytest.raises(firmware.NoToolchain, match="idf.py is not on PATH: run `. .*/export.sh`"):
        firmware.detect("idf", dict(env, PATH="/usr/bin:/bin"))
    d = firmware.def_dir("esp32")
    cmds = firmware.commands(firmware.Toolchain("idf", ""), d, tmp_path / "out", tmp_path / "mp", True)
    assert cmds == [["make", "-C", "mpy-cross"],
                    ["make", "-C", "ports/esp32", "BOARD=GRINDVAKT_ESP32", f"BOARD_DIR={d}",
                     f"BUILD={tmp_path / 'out' / 'idf'}", "submodules"],
                    ["env", f"GV_FIRMWARE_GEN={tmp_path / 'out'}", "make", "-C", "ports/esp32",
                     "BOARD=GRINDVAKT_ESP32", f"BOARD_DIR={d}", f"BUILD={tmp_path / 'out' / 'idf'}"]]


# A docker whose engine answers and whose `run` plays ESP-IDF: it records its argv and writes the
# images where the make command line says (BUILD=...), as the real build does.
FAKE_DOCKER = r"""
import json, os, re, sys
log = os.environ["FAKE_DOCKER_LOG"]
with open(log, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\n")
if sys.argv[1] == "info":
    print("27.3.1")
    sys.exit(0)
cmd = sys.argv[-1]
assert "GV_FIRMWARE_GEN=" + os.environ["EXPECT_GEN"] in sys.argv, sys.argv
assert os.path.exists(os.path.join(os.environ["EXPECT_GEN"], "gv_build.py"))
build = re.findall(r"BUILD=(\S+)", cmd)[-1]
for rel, size in (("firmware.bin", 1900000), ("micropython.bin", 1850000),
                  ("bootloader/bootloader.bin", 26000), ("partition_table/partition-table.bin", 3072)):
    p = os.path.join(build, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        f.write(bytes([len(rel)]) * size)
"""


def test_a_build_in_docker_runs_the_printed_commands_and_writes_the_manifest(tmp_path):
    mp = tmp_path / "micropython"  # a checkout of the pinned tag (an empty one: docker is fake)
    mp.mkdir()
    git = ["git", "-C", str(mp), "-c", "user.name=t", "-c", "user.email=t@t"]
    for c in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "x"], ["tag", firmware.MICROPYTHON_TAG]):
        subprocess.run(git + c, check=True)
    out_root = tmp_path / "out"
    bindir = _fake_bin(tmp_path, "docker", FAKE_DOCKER)
    env = _env(tmp_path, f"{bindir}:{os.environ['PATH']}", MICROPY_DIR=str(mp),
               FAKE_DOCKER_LOG=str(tmp_path / "docker.log"), EXPECT_GEN=str(out_root / "GRINDVAKT_ESP32"))
    dry = _run_cli(["build", "boards/esp32-spi.json", "--dry-run", "--out", str(out_root)], env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "toolchain: Docker engine 27.3.1, image espressif/idf:v5.5.1" in dry.stdout
    assert not out_root.exists() and "git clone" not in dry.stdout  # the checkout is there already
    printed = [ln[4:] for ln in dry.stdout.splitlines() if ln.startswith("  $ ")]
    assert len(printed) == 1 and printed[0].startswith("docker run --rm -u ")
    assert f"-v {mp}:{mp}" in printed[0] and "espressif/idf:v5.5.1 bash -c 'make -C mpy-cross && " in printed[0]

    real = _run_cli(["build", "boards/esp32-spi.json", "--out", str(out_root)], env)
    assert real.returncode == 0, real.stdout + real.stderr
    runs = [json.loads(x) for x in (tmp_path / "docker.log").read_text().splitlines()]
    import shlex
    assert [r for r in runs if r[0] == "run"] == [shlex.split(printed[0])[1:]]  # exactly what was printed
    out = out_root / "GRINDVAKT_ESP32"
    m = json.loads((out / "manifest.json").read_text())
    bid = firmware.build_id(firmware.def_dir("esp32"))
    assert m["build_id"] == bid and m["micropython"] == "v1.28.0" and m["idf"] == "v5.5.1"
    assert m["bins"]["firmware.bin"]["offset"] == "0x1000" and m["bins"]["firmware.bin"]["size"] == 1900000
    assert m["frozen"]["gv/app.py"] == firmware._sha(firmware.FIRMWARE / "gv" / "app.py")
    assert f"ID = {bid!r}" in (out / "gv_build.py").read_text()
    # the checkout at another tag is refused before anything runs
    subprocess.run(git + ["tag", "-d", firmware.MICROPYTHON_TAG], check=True, capture_output=True)
    subprocess.run(git + ["tag", "v1.22.0"], check=True)
    other = _run_cli(["build", "boards/esp32-spi.json", "--out", str(out_root)], env)
    assert other.returncode == 1 and "is v1.22.0, not v1.28.0" in other.stderr
