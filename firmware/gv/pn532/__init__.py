# PN532 NFC front end: frame codec (frame), buses (transport), the card poller (driver), uid_hex (uid).
