# Runs one MicroPython test module inside the unix port (never under CPython).
# usage: micropython tools/mptest.py path/to/test_x.py [test_name ...]
# Prints one line per test: "MPTEST PASS name" or "MPTEST FAIL name" followed by the traceback.
# A test is a module-level function named test_*; it takes no arguments and fails by raising.
import sys


def _load(path):
    cut = path.rfind("/")
    folder, name = (path[:cut], path[cut + 1:]) if cut >= 0 else (".", path)
    if name.endswith(".py"):
        name = name[:-3]
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return __import__(name)


def main(argv):
    mod = _load(argv[1])
    names = argv[2:] or sorted(n for n in dir(mod) if n.startswith("test_"))
    failed = 0
    for name in names:
        fn = getattr(mod, name, None)
        if fn is None:
            print("MPTEST FAIL", name)
            print("no such test in", argv[1])
            failed += 1
            continue
        try:
            fn()
        except BaseException as e:  # noqa: B036 - report everything, including SystemExit
            failed += 1
            print("MPTEST FAIL", name)
            sys.print_exception(e)
            continue
        print("MPTEST PASS", name)
    sys.exit(1 if failed else 0)


main(sys.argv)
