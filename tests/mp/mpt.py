# Small assertion helpers for MicroPython test modules (unittest is not on the unix port).
import os


def eq(a, b, msg=""):
    if a != b:
        raise AssertionError("%r != %r %s" % (a, b, msg))


def raises(exc, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except exc as e:
        return e
    raise AssertionError("%s not raised by %s" % (exc.__name__, fn))


def tmpdir():
    """A fresh folder for this test (set by the pytest plugin), or /tmp when run by hand."""
    return os.getenv("MPTEST_TMP") or "/tmp"
