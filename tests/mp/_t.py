import sys
import test_allowlist_snapshot as T
from gv.allowlist.store import Allowlist
dev, path = T.prepare(T.Flaky)
T.mount(dev)
al = Allowlist(T.ROOT, dev, T.SP, in_place=False).open()
start = dev.writes
T.feed(al, T.NEW)
total = dev.writes - start
al = None
lo = int(sys.argv[1]) if len(sys.argv) > 1 else 0
for n in range(lo, total):
    print("n", n, total)
    dev.load(path)
    al = T.boot(dev)
    dev.fail_at = dev.writes + n
    try:
        T.feed(al, T.NEW)
    except OSError as e:
        print(" failed", e)
    print(" after")
    al = T._after_failure(al, dev, "write %d" % n)
    al = None
