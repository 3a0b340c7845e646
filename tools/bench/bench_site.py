"""The virtual site's end-to-end figures with 50 readers (tools/site_scenario.py)."""
import tempfile
from pathlib import Path

from tools import site_scenario
from tools.bench import metric


def run() -> dict:
    with tempfile.TemporaryDirectory() as d:
        m = site_scenario.run(Path(d), n_readers=50, extra_cards=1500)
    return {
        "site.block_to_deny_p50_ms_50_readers": metric(round(m["block_to_deny_p50_ms"], 1), "ms",
                                                        "block command to the reader's acknowledgement"),
        "site.block_to_deny_p99_ms_50_readers": metric(round(m["block_to_deny_p99_ms"], 1), "ms", "<= 1000"),
        "site.events_lost": metric(m["events_lost"], "events", "0"),
        "site.events_duplicated": metric(m["events_duplicated"], "events", "0"),
        "site.false_grants": metric(m["false_grants"], "grants", "0"),
        "site.converge_after_outage_s": metric(round(m["converge_after_outage_s"], 2), "s",
                                               "network restored to every reader at the registry's version"),
        "site.initial_converge_s_50_readers": metric(round(m["initial_converge_s"], 2), "s", ""),
    }
