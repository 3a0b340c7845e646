# Builds the machine-level hardware that a board file (/board.json) describes. The only
# firmware module besides the drivers that touches `machine`.
import machine


def pin_out(num, value=0):
    return None if num is None else machine.Pin(num, machine.Pin.OUT, value=value)


def pn532_transport(board):
    """The PN532's bus from the board file, wrapped in the driver's transport; and its reset pin."""
    from gv.pn532 import transport

    pn = board["pn532"]
    bus = pn["bus"]
    rst = pn.get("rst")
    rst_pin = None if rst is None else machine.Pin(rst, machine.Pin.OUT, value=1)
    if bus == "i2c":
        c = pn["i2c"]
        i2c = machine.I2C(c.get("id", 0), scl=machine.Pin(c["scl"]), sda=machine.Pin(c["sda"]),
                          freq=c.get("freq", 400000), timeout=c.get("timeout_us", 200000))
        return transport.I2CTransport(i2c), rst_pin
    if bus == "uart":
        c = pn["uart"]
        uart = machine.UART(c.get("id", 1), baudrate=c.get("baud", 115200), tx=c["tx"], rx=c["rx"])
        return transport.UARTTransport(uart), rst_pin
    if bus == "spi":
        c = pn["spi"]
        spi = machine.SPI(c.get("id", 2), baudrate=c.get("baud", 1000000), polarity=0, phase=0,
                          sck=machine.Pin(c["sck"]), mosi=machine.Pin(c["mosi"]), miso=machine.Pin(c["miso"]))
        cs = machine.Pin(pn["cs"], machine.Pin.OUT, value=1)
        return transport.SPITransport(spi, cs), rst_pin
    raise ValueError("unknown PN532 bus: %s" % bus)
