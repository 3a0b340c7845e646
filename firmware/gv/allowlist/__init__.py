# The on-flash allowlist: record codec (record.py, shared with the host) and store (store.py).
