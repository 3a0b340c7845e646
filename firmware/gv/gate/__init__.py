# The gate: the pure decision state machine (core), lockouts kept on flash (lockout), the
# wall clock (clock), output signals (signals) and the asyncio glue to the drivers (runner).
# See docs/gate.md.
