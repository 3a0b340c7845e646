# Board-support shim: the `esp32` module's flash partition, so firmware that reads raw flash
# blocks (the allowlist's one-read lookups) finds the virtual board's flash image exactly as it
# finds the "vfs" partition on an ESP32. Never deployed to a real board.
import vboard


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, dev, label="vfs"):
        self._dev = dev
        self.label = label

    @classmethod
    def find(cls, type=TYPE_APP, subtype=0xFF, label=None):
        dev = vboard.FLASH_DEV
        if dev is None or type != cls.TYPE_DATA or label not in (None, "vfs"):
            return []
        return [cls(dev)]

    def info(self):
        d = self._dev
        return (self.TYPE_DATA, 0x81, 0x200000, d.blocks * d.block_size, self.label, False)

    def readblocks(self, block, buf, offset=0):
        return self._dev.readblocks(block, buf, offset)

    def writeblocks(self, block, buf, offset=None):
        return self._dev.writeblocks(block, buf, offset)

    def ioctl(self, op, arg):
        return self._dev.ioctl(op, arg)
