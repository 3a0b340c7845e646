# What the worker sees and hears for each outcome: (green, red, buzzer) patterns, each a tuple of
# millisecond durations alternating on, off, on, ... and whether it repeats until replaced.
# A duress grant uses exactly the grant signal (silent alarm).
from gv.compat import const

S_NONE = const(0)
S_GRANT = const(1)  # green for open_ms, one beep
S_DENY = const(2)  # unknown, blocked, terminated: red, one long buzz
S_INVALID = const(3)  # not activated, suspended, outside its dates: red blinks twice, two buzzes
S_PIN_PROMPT = const(4)  # enter your PIN: green blinks, short chirp
S_KEY = const(5)  # key click
S_PIN_WRONG = const(6)  # wrong PIN / timeout: red, three short beeps
S_LOCKED = const(7)  # refused because the card or the reader is locked: red fast blinks
S_MANY = const(8)  # more than one card: both LEDs blink, two chirps
S_WAVE_LOCK = const(9)  # reader locked after waving: red/green alternate until it recovers
S_READER_LOCK = const(10)  # reader locked after refused cards: red slow blink until it recovers
S_CARD_LOCK = const(11)  # this card just got locked (wrong PINs): long red, long buzz
S_READY = const(12)  # lock over: everything off, one short chirp
S_FAULT = const(13)  # error in the decision path: red, no relay

_ = ()
# signal: (green, red, buzzer, repeat)
PATTERNS = {
    S_GRANT: (None, _, (120,), False),  # green None = on for the relay's open_ms
    S_DENY: (_, (1500,), (600,), False),
    S_INVALID: (_, (400, 200, 400, 200, 400), (150, 150, 150), False),
    S_PIN_PROMPT: ((200, 200), _, (40,), True),
    S_KEY: ((60,), _, (25,), False),
    S_PIN_WRONG: (_, (1200,), (80, 80, 80, 80, 80), False),
    S_LOCKED: (_, (100, 100, 100, 100, 100, 100, 100), (300,), False),
    S_MANY: ((150, 150, 150), (150, 150, 150), (60, 100, 60), False),
    S_WAVE_LOCK: ((250, 250), (0, 250, 250), (100, 1900), True),
    S_READER_LOCK: (_, (500, 500), (100, 2900), True),
    S_CARD_LOCK: (_, (2000,), (1000,), False),
    S_READY: (_, _, (50,), False),
    S_FAULT: (_, (200, 200, 200, 200, 200), (500,), False),
}
