"""Schema migrations, in order, never edited once released: a change is a new migration.

`{serial}` becomes the dialect's auto-increment key. A statement given as a dict is
dialect-specific ({"sqlite": ..., "postgresql": ...}); everything else is shared SQL.
Binary values (keys, verifiers, records) are stored as hex TEXT so the SQL stays portable.
"""

_V1 = [
    """CREATE TABLE sites (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        tax_site_id TEXT NOT NULL,
        pin_policy TEXT NOT NULL DEFAULT 'card',
        card_key TEXT NOT NULL,
        pin_key TEXT NOT NULL,
        version BIGINT NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE cards (
        card_no TEXT PRIMARY KEY,
        uid TEXT NOT NULL UNIQUE,
        holder TEXT NOT NULL DEFAULT '',
        pnr TEXT NOT NULL DEFAULT '',
        employer TEXT NOT NULL DEFAULT '',
        employer_org TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL,
        pin_required INTEGER NOT NULL DEFAULT 0,
        valid_from TEXT NOT NULL,
        valid_until TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL)""",
    # A card's sites; the PIN verifier is per site because each site has its own PIN key.
    """CREATE TABLE card_sites (
        card_no TEXT NOT NULL REFERENCES cards(card_no),
        site_id TEXT NOT NULL REFERENCES sites(id),
        pin_verifier TEXT,
        PRIMARY KEY (card_no, site_id))""",
    """CREATE TABLE readers (
        id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL REFERENCES sites(id),
        secret TEXT NOT NULL,
        broker_password TEXT NOT NULL,
        firmware TEXT NOT NULL DEFAULT '',
        applied_version BIGINT NOT NULL DEFAULT 0,
        applied_at TEXT,
        last_seen TEXT,
        online INTEGER NOT NULL DEFAULT 0,
        health TEXT NOT NULL DEFAULT '',
        lag_since TEXT,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE audit (
        id {serial},
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '')""",
    # One row per allowlist version of a site; its records are in change_records.
    """CREATE TABLE changes (
        site_id TEXT NOT NULL REFERENCES sites(id),
        version BIGINT NOT NULL,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        subject TEXT NOT NULL,
        blocking INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (site_id, version))""",
    """CREATE TABLE change_records (
        site_id TEXT NOT NULL,
        version BIGINT NOT NULL,
        key8 TEXT NOT NULL,
        rec TEXT,
        PRIMARY KEY (site_id, version, key8))""",
    # The site's current allowlist, one record per card key (what a rebuild sends).
    """CREATE TABLE allowlist (
        site_id TEXT NOT NULL REFERENCES sites(id),
        key8 TEXT NOT NULL,
        card_no TEXT NOT NULL,
        rec TEXT NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (site_id, key8))""",
    """CREATE TABLE events (
        reader_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        site_id TEXT NOT NULL,
        at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        kind INTEGER NOT NULL,
        result INTEGER NOT NULL,
        reason INTEGER NOT NULL,
        uid TEXT NOT NULL DEFAULT '',
        card_no TEXT,
        aux BIGINT NOT NULL DEFAULT 0,
        clock_set INTEGER NOT NULL DEFAULT 1,
        raw TEXT NOT NULL,
        PRIMARY KEY (reader_id, seq))""",
    "CREATE INDEX events_site_at ON events (site_id, at)",
    # The staff ledger: append-only entries; a shift is the entries sharing a shift_id.
    """CREATE TABLE ledger (
        id {serial},
        shift_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        site_id TEXT NOT NULL,
        tax_site_id TEXT NOT NULL,
        employer TEXT NOT NULL,
        employer_org TEXT NOT NULL,
        person_name TEXT NOT NULL,
        pnr TEXT NOT NULL,
        card_no TEXT NOT NULL,
        at TEXT NOT NULL,
        reader_id TEXT NOT NULL,
        entered_at TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX ledger_site_at ON ledger (site_id, at)",
    "CREATE INDEX ledger_shift ON ledger (shift_id)",
    "CREATE INDEX ledger_card ON ledger (card_no, site_id, at)",
    """CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL)""",
    # Ledger rows are never edited: the database itself refuses an UPDATE.
    {"sqlite": """CREATE TRIGGER ledger_never_edited BEFORE UPDATE ON ledger
        BEGIN SELECT RAISE(ABORT, 'ledger entries are never edited; add a correction'); END""",
     "postgresql": """CREATE FUNCTION gv_ledger_never_edited() RETURNS trigger AS $$
        BEGIN RAISE EXCEPTION 'ledger entries are never edited; add a correction'; END
        $$ LANGUAGE plpgsql"""},
    {"postgresql": """CREATE TRIGGER ledger_never_edited BEFORE UPDATE ON ledger
        FOR EACH ROW EXECUTE FUNCTION gv_ledger_never_edited()"""},
]

# Which allowlist version of each site has been pushed live; several `serve` instances claim a
# push with a compare-and-set on this row, so each version is pushed by exactly one of them.
_V2 = [
    """CREATE TABLE site_push (
        site_id TEXT PRIMARY KEY REFERENCES sites(id),
        version BIGINT NOT NULL,
        at TEXT NOT NULL,
        instance TEXT NOT NULL)""",
]

# A lease held by one serve instance at a time: the one that pushes live deltas (so a reader
# gets them in order, from one connection) and flags laggards. Others take over when it lapses.
_V3 = [
    """CREATE TABLE leases (
        name TEXT PRIMARY KEY,
        instance TEXT NOT NULL,
        until_at TEXT NOT NULL)""",
]

# Operators' remote commands (`host-sync readers command`): the CLI queues a row, one serve
# instance claims it (UPDATE ... WHERE state = 'pending'), sends it and records the reader's
# CMDRES. arg NULL on set_clock = the host's time when it is sent.
_V4 = [
    """CREATE TABLE commands (
        id {serial},
        reader_id TEXT NOT NULL REFERENCES readers(id),
        command TEXT NOT NULL,
        arg BIGINT,
        state TEXT NOT NULL DEFAULT 'pending',
        requested_by TEXT NOT NULL,
        requested_at TEXT NOT NULL,
        deadline_at TEXT NOT NULL,
        instance TEXT,
        counter BIGINT,
        sent_at TEXT,
        finished_at TEXT,
        result TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX commands_state ON commands (state)",
    "CREATE INDEX commands_counter ON commands (reader_id, counter)",
]

# The operators' web console (host_sync/web/): accounts with roles (optionally limited to sites),
# sessions (only a hash of the cookie's token is stored), alarms and their deliveries to the
# configured sinks (an outbox: each delivery is retried until it succeeds or gives up), and the
# indexes its pages query by (card search, events by time and kind, the alarm scan's cursor).
_V5 = [
    """CREATE TABLE users (
        id {serial},
        username TEXT NOT NULL UNIQUE,
        pw_hash TEXT NOT NULL,
        role TEXT NOT NULL,
        sites TEXT NOT NULL DEFAULT '',
        failed INTEGER NOT NULL DEFAULT 0,
        locked_until TEXT,
        disabled INTEGER NOT NULL DEFAULT 0,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE web_sessions (
        token_hash TEXT PRIMARY KEY,
        user_id BIGINT NOT NULL REFERENCES users(id),
        csrf TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL)""",
    "CREATE INDEX web_sessions_user ON web_sessions (user_id)",
    """CREATE TABLE alarms (
        id {serial},
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        site_id TEXT NOT NULL DEFAULT '',
        reader_id TEXT NOT NULL DEFAULT '',
        at TEXT NOT NULL,
        message TEXT NOT NULL,
        cleared_at TEXT,
        acked_by TEXT,
        acked_at TEXT,
        ack_note TEXT NOT NULL DEFAULT '')""",
    "CREATE INDEX alarms_key ON alarms (key, cleared_at)",
    "CREATE INDEX alarms_open ON alarms (acked_at, id)",
    """CREATE TABLE alarm_sinks (
        id {serial},
        kind TEXT NOT NULL,
        target TEXT NOT NULL,
        secret TEXT NOT NULL DEFAULT '',
        options TEXT NOT NULL DEFAULT '{}',
        enabled INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL)""",
    """CREATE TABLE alarm_deliveries (
        id {serial},
        alarm_id BIGINT NOT NULL REFERENCES alarms(id),
        sink_id BIGINT NOT NULL REFERENCES alarm_sinks(id),
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at TEXT NOT NULL,
        last_error TEXT NOT NULL DEFAULT '',
        delivered_at TEXT)""",
    "CREATE INDEX alarm_deliveries_due ON alarm_deliveries (state, next_at)",
    "CREATE INDEX events_received ON events (received_at)",
    "CREATE INDEX events_reader_at ON events (reader_id, at)",
    "CREATE INDEX events_card_at ON events (card_no, at)",
    "CREATE INDEX cards_holder ON cards (lower(holder))",
    "CREATE INDEX cards_employer ON cards (lower(employer))",
    "CREATE INDEX readers_site ON readers (site_id, id)",
    "CREATE INDEX audit_subject ON audit (subject, id)",
    "CREATE INDEX changes_at ON changes (at)",
    {"postgresql": 'CREATE INDEX cards_no_c ON cards (card_no COLLATE "C")'},
    {"postgresql": 'CREATE INDEX cards_uid_c ON cards (uid COLLATE "C")'},
    "CREATE INDEX changes_blocking ON changes (site_id, blocking, version)",
    "CREATE INDEX changes_subject ON changes (subject, at)",
]

# Events made while a reader's clock was not set: how their time was found ('reader': its own
# clock; 'dated': from the boot's later "clock set" event; 'estimated': the reader's lower bound;
# 'received': no basis, the reception time) and whether their ledger entry still waits for it.
_V6 = [
    "ALTER TABLE events ADD COLUMN time_basis TEXT NOT NULL DEFAULT 'reader'",
    "ALTER TABLE events ADD COLUMN held INTEGER NOT NULL DEFAULT 0",
    "CREATE INDEX events_held ON events (reader_id, held, seq)",
]

# The console's card search by name: every word of a card's holder and employer, lowercased,
# in an index (card_terms), so "berg" or "bygg 77" is an index range, not a scan of every card.
# Triggers mark a card whose names change (whatever code changes them); the registry re-indexes
# the marked cards before a search (Registry.refresh_search_terms), and the alarm watcher does
# it every second in the background. Existing cards are all marked here.
_V7 = [
    """CREATE TABLE card_terms (
        term TEXT NOT NULL,
        card_no TEXT NOT NULL,
        PRIMARY KEY (term, card_no))""",
    "CREATE INDEX card_terms_card ON card_terms (card_no)",
    "CREATE TABLE card_terms_dirty (card_no TEXT PRIMARY KEY)",
    {"postgresql": 'CREATE INDEX card_terms_term_c ON card_terms (term COLLATE "C", card_no)'},
    {"sqlite": """CREATE TRIGGER cards_terms_ins AFTER INSERT ON cards
        BEGIN INSERT OR IGNORE INTO card_terms_dirty (card_no) VALUES (NEW.card_no); END""",
     "postgresql": """CREATE FUNCTION gv_card_terms_dirty() RETURNS trigger AS $$
        BEGIN INSERT INTO card_terms_dirty (card_no) VALUES (NEW.card_no) ON CONFLICT DO NOTHING;
        RETURN NEW; END $$ LANGUAGE plpgsql"""},
    {"sqlite": """CREATE TRIGGER cards_terms_upd AFTER UPDATE OF holder, employer ON cards
        BEGIN INSERT OR IGNORE INTO card_terms_dirty (card_no) VALUES (NEW.card_no); END""",
     "postgresql": """CREATE TRIGGER cards_terms_dirty AFTER INSERT OR UPDATE OF holder, employer
        ON cards FOR EACH ROW EXECUTE FUNCTION gv_card_terms_dirty()"""},
    "INSERT INTO card_terms_dirty (card_no) SELECT card_no FROM cards",
]

# Operators' everyday edits: each site's time zone (ledger days and every time shown for it), and
# the card a replacement card replaces (the person's history follows the replacement).
_V8 = [
    "ALTER TABLE sites ADD COLUMN tz TEXT NOT NULL DEFAULT 'Europe/Stockholm'",
    "ALTER TABLE cards ADD COLUMN replaces TEXT NOT NULL DEFAULT ''",
]

# The console's events page without a site filter (refusals, lockouts, alarms of every site
# the account sees) pages by time: an index on the event time alone.
_V9 = [
    "CREATE INDEX events_at ON events (at)",
]

# Passages the registry would not have let in, or with a time that cannot be the shift's (in the
# future, before the reader was added, dated by an implausible "clock set"): the event and its
# ledger entry carry a short reason (docs/ledger.md). The ingest asks the site's allowlist history
# what a card's record was at an event's time: change_records by card key, newest version first.
_V10 = [
    "ALTER TABLE events ADD COLUMN flag TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE ledger ADD COLUMN flag TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX change_records_key ON change_records (site_id, key8, version)",
]

# A reader's numbering is one board's: a reader id removed and added again (a fresh board) starts
# a new generation (readers.gen, one more than any the id's events had), and events are keyed by
# (reader, generation, seq), so the new board's 1, 2, 3 are not the old board's. An event whose
# number is taken by a different event of the same generation is kept in event_conflicts (a copy
# of the reader's secret in use, or a reader's log rewound), never dropped. SQLite cannot change
# a primary key in place: the table is rebuilt.
_EV_COLS = ("reader_id, seq, site_id, at, received_at, kind, result, reason, uid, card_no, aux,"
            " clock_set, raw, time_basis, held, flag")
_V11 = [
    "ALTER TABLE readers ADD COLUMN gen INTEGER NOT NULL DEFAULT 1",
    {"sqlite": """CREATE TABLE events_v11 (
        reader_id TEXT NOT NULL,
        gen INTEGER NOT NULL DEFAULT 1,
        seq BIGINT NOT NULL,
        site_id TEXT NOT NULL,
        at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        kind INTEGER NOT NULL,
        result INTEGER NOT NULL,
        reason INTEGER NOT NULL,
        uid TEXT NOT NULL DEFAULT '',
        card_no TEXT,
        aux BIGINT NOT NULL DEFAULT 0,
        clock_set INTEGER NOT NULL DEFAULT 1,
        raw TEXT NOT NULL,
        time_basis TEXT NOT NULL DEFAULT 'reader',
        held INTEGER NOT NULL DEFAULT 0,
        flag TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (reader_id, gen, seq))""",
     "postgresql": "ALTER TABLE events ADD COLUMN gen INTEGER NOT NULL DEFAULT 1"},
    {"sqlite": "INSERT INTO events_v11 (%s, gen) SELECT %s, 1 FROM events" % (_EV_COLS, _EV_COLS),
     "postgresql": "ALTER TABLE events DROP CONSTRAINT events_pkey"},
    {"sqlite": "DROP TABLE events",
     "postgresql": "ALTER TABLE events ADD PRIMARY KEY (reader_id, gen, seq)"},
    {"sqlite": "ALTER TABLE events_v11 RENAME TO events",
     "postgresql": "DROP INDEX events_held"},
    {"sqlite": "CREATE INDEX events_site_at ON events (site_id, at)"},
    {"sqlite": "CREATE INDEX events_received ON events (received_at)"},
    {"sqlite": "CREATE INDEX events_reader_at ON events (reader_id, at)"},
    {"sqlite": "CREATE INDEX events_card_at ON events (card_no, at)"},
    {"sqlite": "CREATE INDEX events_at ON events (at)"},
    "CREATE INDEX events_held ON events (reader_id, gen, held, seq)",
    """CREATE TABLE event_conflicts (
        id {serial},
        reader_id TEXT NOT NULL,
        gen INTEGER NOT NULL,
        seq BIGINT NOT NULL,
        site_id TEXT NOT NULL,
        at TEXT NOT NULL,
        received_at TEXT NOT NULL,
        kind INTEGER NOT NULL,
        result INTEGER NOT NULL,
        reason INTEGER NOT NULL,
        uid TEXT NOT NULL DEFAULT '',
        card_no TEXT,
        raw TEXT NOT NULL,
        flag TEXT NOT NULL DEFAULT '',
        UNIQUE (reader_id, gen, seq, raw))""",
]

MIGRATIONS = [
    (1, "registry, allowlist versions, events, staff ledger", _V1),
    (2, "live pushes claimed by one serve instance", _V2),
    (3, "the pushing instance's lease", _V3),
    (4, "operators' remote commands to readers", _V4),
    (5, "web console: accounts, sessions, alarms and their sinks, page indexes", _V5),
    (6, "event times found after the fact (clock set later in the same boot)", _V6),
    (7, "the console's card search by name words", _V7),
    (8, "site time zones, replacement cards", _V8),
    (9, "events by time alone (the console's events page)", _V9),
    (10, "flagged events and ledger entries, allowlist history by card key", _V10),
    (11, "reader numbering generations, conflicting events kept", _V11),
]
