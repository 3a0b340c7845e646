# The reader's boot number: counted up once per boot and kept on flash (a small file, written
# through a temp file and an atomic rename). It is the top half of every counter the reader
# sends (gv.sync.engine), so the host can tell a HELLO from this boot from one recorded in an
# earlier boot and replayed (docs/protocol.md, "Envelope").
#
#   boot = BootCount("/boot")   # reads n, stores n + 1
#   boot.n                      # this boot's number (1 on a fresh flash)
#   boot.raise_to(k)            # the host saw k - 1 already (the file was lost): jump to k
#
# Lost or unreadable file: the count starts again at 1 and the host asks for a higher one
# (protocol C_HELLO) at the first connect; a flash that refuses the write only costs that round
# trip at the next boot, never the gate.
import os

_MAX = 0xFFFFFFFF


class BootCount:
    def __init__(self, path=None):
        self.path = path
        self.n = 1
        self.error = None
        if path is None:
            return
        try:
            with open(path) as f:
                self.n = int(f.read().strip() or "0") + 1
        except (OSError, ValueError):
            self.n = 1
        if self.n > _MAX:
            self.n = _MAX
        self._store()

    def raise_to(self, n):
        if n > self.n:
            self.n = min(n, _MAX)
            self._store()

    def _store(self):
        if self.path is None:
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w") as f:
                f.write("%d\n" % self.n)
            os.rename(tmp, self.path)
            self.error = None
        except OSError as e:
            self.error = e
