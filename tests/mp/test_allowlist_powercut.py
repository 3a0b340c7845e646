# Power cut at every block write of a delta apply, a compaction and a snapshot install: after each
# cut the flash is remounted and a fresh store opened, and it must be exactly at the old or the
# new version, every record checked, healthy, and answering lookups. A cut snapshot resumes.
import gc
import mpt
from flashdev import PowerCut, mount, umount
from gv.allowlist.store import Allowlist
from test_allowlist_fixture import (ROOT, SP, check, check_deltas_only, count, delta, deltas_only, fresh,
                                   install, snapshot_chunks)

HEAPSIZE = "256k"  # a fresh store per simulated boot, many boots per process
TIMEOUT = 600
N = 700  # two shards of SP=2 pages: a compaction rewrites both, a snapshot resumes part-way


def _prepare(deltas, ip=False, blocks=48):
    """A store at version 1 + deltas (log not compacted; ip: deltas in place), saved as an image;
    returns dev, path."""
    dev = fresh(blocks=blocks)
    al = Allowlist(ROOT, dev, SP, in_place=ip).open()
    install(al, N, 1)
    for k in range(1, 1 + deltas):
        assert al.apply_delta(k, k + 1, delta(N, k))
    al = None
    umount()
    path = mpt.tmpdir() + "/base.img"
    dev.save(path)
    return dev, path


def _boot(dev, ip=True):
    gc.collect()
    umount()
    dev.restore()
    mount(dev)
    return Allowlist(ROOT, dev, SP, in_place=ip).open()


def _cut_everywhere(dev, path, scenario, old_v, new_v, after=None, verify=None, ip=True, tear=False):
    """Run scenario with the power cut after n writes for every n; check each outcome (verify(al):
    the store's content at its version, by default the fixture's population of N cards).
    ip: deltas may go in place; tear: the write the cut lands on is half programmed."""
    mount(dev)
    al = Allowlist(ROOT, dev, SP, in_place=ip).open()
    start = dev.writes
    scenario(al)
    total = dev.writes - start
    al = None
    umount()
    assert total > 3, total
    seen = {old_v: 0, new_v: 0}
    for n in range(total + 1):
        dev.restore()
        dev.load(path)
        al = _boot(dev, ip)
        dev.cut_power_after(n, tear)
        try:
            scenario(al)
            cut = False
        except PowerCut:
            cut = True
        except OSError:  # LittleFS reports the dead device as EIO through its own error path
            cut = True
        al = None
        al = _boot(dev, ip)
        mpt.eq(dev.nor_violations, 0, "a program over unerased flash")
        if al.version not in seen:
            raise AssertionError("cut %d/%d: version %d" % (n, total, al.version))
        mpt.eq(al.health, "ok", "cut %d" % n)
        if verify:
            verify(al)
        else:
            check(al, N, al.version)
        seen[al.version] += 1
        if not cut:
            mpt.eq(al.version, new_v)
        if after:
            after(al, n)
        al = None
    return seen


def _delta_cuts(ip, tear, prior_ip=False):
    dev, path = _prepare(1, prior_ip)

    def scenario(al):
        al.apply_delta(2, 3, delta(N, 2))
        if al.version != 3:  # apply_delta reports a dead flash as False: surface it as a cut
            raise PowerCut(5)
        assert (al._nlog == 0) == ip, ("went in place" if ip else "went to the log", al._nlog)

    def after(al, n):
        # the store takes the next delta after any cut (an in-place one, when it went in place)
        assert al.apply_delta(al.version, al.version + 1, delta(N, al.version)), al.health
        check(al, N, al.version)

    seen = _cut_everywhere(dev, path, scenario, 2, 3, after, ip=ip, tear=tear)
    assert seen[2] > 0 and seen[3] > 0, seen
    umount()
    return seen


def test_cut_during_delta_apply():
    # the delta-file path: a delta file, then the manifest switch
    print("delta-file cuts", _delta_cuts(False, False))


def test_cut_during_in_place_delta():
    # in place: intent record, entries, commit mark, entries' commit marks, done mark; over a
    # store that already holds in-place entries of the delta before
    print("in-place cuts", _delta_cuts(True, False, True))


def test_torn_write_during_in_place_delta():
    # the same with the write the cut lands on half programmed (a torn entry or mark)
    print("torn in-place cuts", _delta_cuts(True, True, True))


def test_cut_during_compaction():
    _compaction_cuts(48)


def test_cut_during_compaction_in_shard_directories():
    # a partition past BIG_PART blocks keeps its shard files in four directories
    from gv.allowlist.layout import BIG_PART
    _compaction_cuts(BIG_PART + 16)


def _compaction_cuts(blocks):
    dev, path = _prepare(2, blocks=blocks)

    def scenario(al):
        steps = 0
        while al.compact_step():
            steps += 1
        if al.health != "ok":
            raise PowerCut(5)

    def after(al, n):
        # whatever the cut left, a fresh compaction completes and changes nothing
        while al.compact_step():
            pass
        mpt.eq(al.health, "ok")
        mpt.eq(al._nlog, 0)
        check(al, N, 3)

    seen = _cut_everywhere(dev, path, scenario, 3, 3, after)
    assert seen[3] > 10, seen
    print("compaction cuts", seen)
    umount()


def test_cut_during_compaction_of_a_delta_only_store():
    # A store that never had a snapshot (3 deltas from version 0, no shard file): its first
    # compaction creates the shards, and a cut anywhere in it must lose no card.
    dev = fresh(blocks=48)
    al = Allowlist(ROOT, dev, SP).open()
    deltas_only(al, 3, 10)
    al = None
    umount()
    path = mpt.tmpdir() + "/deltas.img"
    dev.save(path)

    def scenario(al):
        while al.compact_step():
            pass
        if al.health != "ok":
            raise PowerCut(5)

    def verify(al):
        check_deltas_only(al, 3, 10)

    def after(al, n):
        while al.compact_step():
            pass
        mpt.eq(al.health, "ok")
        mpt.eq(al._nlog, 0)
        assert len(al._st) >= 1
        check_deltas_only(al, 3, 10)

    seen = _cut_everywhere(dev, path, scenario, 3, 3, after, verify)
    assert seen[3] > 3, seen
    print("delta-only compaction cuts", seen)
    umount()


def test_cut_during_snapshot_install_then_resume():
    dev, path = _prepare(1)  # at version 2; install the snapshot of version 4
    v = 4
    total = count(N, v)
    resumed = []

    def scenario(al):
        install(al, N, v)

    def after(al, n):
        # the host resends from where the reader says it stands, and the install completes
        prog = al.snapshot_progress()
        if al.version == v:
            return
        got = al.begin_snapshot(v, total)
        if prog is not None:
            mpt.eq(prog[2], got)
        resumed.append(got)
        for c in snapshot_chunks(N, v, skip=got):
            al.snapshot_chunk(c)
        al.end_snapshot()
        mpt.eq(al.health, "ok")
        check(al, N, v)

    seen = _cut_everywhere(dev, path, scenario, 2, v, after)
    assert seen[2] > 0 and seen[v] > 0, seen
    assert 0 in resumed and max(resumed) > 0, resumed  # some cuts resumed part-way
    print("snapshot cuts", seen, "resumed from", sorted(set(resumed)))
    umount()
