"""The append-only journal: replay, torn last line, damage, states table, private files."""

import os

import pytest

from bmupgrade.engine.states import IllegalTransition
from bmupgrade.errors import BmError, UsageError
from bmupgrade.journal import Journal, RunStore, private_dir


def _journal(tmp_path):
    return Journal.create(tmp_path / "state", runbook={"path": "rb", "sha256": "x", "name": "t"},
                          step_ids=["a", "b"])


def test_records_replay_to_the_same_view(tmp_path):
    j = _journal(tmp_path)
    j.mark("a", ["bm1", "bm2"], "started", node_fields={"bm1": {"tag": "t1"}})
    j.mark("a", ["bm1"], "done", exit_code=0)
    j.mark("a", ["bm2"], "unknown")
    j.set(["captured", "v"], "4.9.2")
    j.add("facts", {"at": "start"})
    j.set_status("failed")
    again = Journal.load(j.path).data
    assert again["steps"] == j.data["steps"] and again["captured"] == {"v": "4.9.2"}
    assert again["steps"]["a"]["state"] == "unknown" and again["status"] == "failed"
    assert again["steps"]["a"]["nodes"]["bm1"]["tag"] == "t1"


def test_one_line_per_transition_and_compaction(tmp_path):
    j = _journal(tmp_path)
    lines = j.path.read_bytes().count(b"\n")
    j.mark("a", ["bm1"], "started")
    assert j.path.read_bytes().count(b"\n") == lines + 1  # an append, not a rewrite
    j.snapshot()
    assert j.path.read_bytes().count(b"\n") == 1
    assert Journal.load(j.path).data["steps"]["a"]["nodes"]["bm1"]["state"] == "started"


def test_a_torn_last_line_is_ignored_and_overwritten(tmp_path):
    j = _journal(tmp_path)
    j.mark("a", ["bm1"], "started")
    j.close()
    with open(j.path, "ab") as f:
        f.write(b'{"r":"node","step":"a","nod')  # the process died mid-write
    j2 = Journal.load(j.path)
    assert j2.data["steps"]["a"]["nodes"]["bm1"]["state"] == "started"
    j2.mark("a", ["bm1"], "done")
    assert Journal.load(j.path).data["steps"]["a"]["nodes"]["bm1"]["state"] == "done"


def test_damage_is_reported_with_path_and_line(tmp_path):
    j = _journal(tmp_path)
    j.mark("a", ["bm1"], "started")
    j.close()
    data = j.path.read_bytes().split(b"\n")
    data[1] = b"garbage"
    j.path.write_bytes(b"\n".join(data))
    with pytest.raises(BmError, match=r"journal\.jsonl:2: the journal is damaged"):
        Journal.load(j.path)
    assert [r.status for r in RunStore(tmp_path / "state").all()] == ["damaged"]


def test_illegal_transitions_are_refused(tmp_path):
    j = _journal(tmp_path)
    with pytest.raises(IllegalTransition):
        j.mark("a", ["bm1"], "failed")  # pending -> failed: it was never sent
    j.mark("a", ["bm1"], "started")
    j.mark("a", ["bm1"], "done")
    with pytest.raises(IllegalTransition):
        j.mark("a", ["bm1"], "started")  # a done step is never sent again
    j.set_status("succeeded")
    with pytest.raises(IllegalTransition):
        j.set_status("failed")


def test_symlinked_journal_and_open_state_dir_are_refused(tmp_path):
    target = tmp_path / "victim"
    target.write_text("keep me")
    runs = tmp_path / "state" / "runs"
    private_dir(runs)
    (runs / "x.journal.jsonl").symlink_to(target)
    with pytest.raises(BmError, match="symbolic link"):
        Journal.load(runs / "x.journal.jsonl")
    assert target.read_text() == "keep me"
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(UsageError, match="writable by others"):
        private_dir(open_dir)
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tiny tmpfs needs root")
def test_a_full_disk_is_an_exit_path_like_the_others(tmp_path):
    """The state dir fills up mid-run (a chatty step): non-zero exit, HA banner, locks released."""
    import re
    import subprocess

    from bmupgrade.runner import Session, start_run
    from bmupgrade.engine import RunOptions
    from bmupgrade.prompts import PolicyPrompter
    from bmupgrade.transport.memory import ANY, MemoryTransport, Reply
    from bmupgrade.ui.report import ConsoleReporter
    from tests.runbook_samples import MINIMAL

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        rb = tmp_path / "rb.yaml"
        rb.write_text(MINIMAL)
        t = MemoryTransport()
        t.state["vip"] = "bm1"
        t.on(ANY, re.compile(r"^ip -o addr"), lambda c: "inet 192.0.2.10/32" if c.node == "bm1" else "")
        t.on(ANY, re.compile(r"dpkg-query"), lambda c: "4.9.2")
        t.on(ANY, re.compile(r"stonith-enabled"), lambda c: "true")
        t.on(ANY, re.compile(r"^apt-get install"), Reply(stdout="x" * 4000 + "\n" * 1 + ("y" * 70 + "\n") * 2000))
        session = Session(small / "state", ConsoleReporter(show_output=False), PolicyPrompter(), lambda r: t,
                          RunOptions())
        s = start_run(rb, session)
        assert s.exit_code == 5 and s.ha_off_open, (s.exit_code, s.message)  # HA was off: 5 + restore hint
        assert "bmupgrade resume" in s.ha_restore_hint
        assert "disk full" in s.message or "No space left" in s.message
        assert not any(p.endswith("/lock") for node in t.files.values() for p in node)  # remote locks released
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_two_runs_started_in_the_same_second_get_two_journals_in_start_order(tmp_path, monkeypatch):
    """The run id is the start second + 16 random bits: a second run in the same second (which
    could draw the same suffix) gets the next suffix, not a FileExistsError traceback, and the
    ids sort in the order the runs started (a later run must be seen as later)."""
    import datetime as real_dt

    from bmupgrade import journal as journal_mod

    class _SameSecond(real_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return real_dt.datetime(2026, 12, 2, 10, 0, 0, tzinfo=tz)

    drawn = iter(["ffe0", "0001", "0001"])
    monkeypatch.setattr(journal_mod.dt, "datetime", _SameSecond)
    monkeypatch.setattr(journal_mod.secrets, "token_hex", lambda n: next(drawn))
    first = _journal(tmp_path)
    ids = [first.run_id]
    for _ in range(2):
        rid = journal_mod.new_run_id(tmp_path / "state")
        ids.append(Journal.create(tmp_path / "state", run_id=rid, runbook={"path": "rb", "sha256": "x",
                                                                          "name": "t"}).run_id)
    assert ids == ["20261202-100000-ffe0", "20261202-100000-ffe1", "20261202-100000-ffe2"]
    assert [p.name[:20] for p in RunStore(tmp_path / "state").paths()] == ids


def test_a_new_journal_is_never_seen_empty(tmp_path, monkeypatch):
    """`bmupgrade status`, `runs` or a second run may read the state dir at any moment: a journal
    appears with its first record in it (it used to exist empty until that record was written,
    and read as "empty or damaged")."""
    import bmupgrade.journal as jmod

    seen = []
    real_write = os.write

    def write(fd, data):  # every moment the journal code writes is a moment a reader may look
        runs = tmp_path / "state" / "runs"
        for p in runs.glob("*.journal.jsonl") if fd > 2 and runs.exists() else []:
            seen.append(RunStore(tmp_path / "state").find(None).status if p.stat().st_size else "empty")
        return real_write(fd, data)

    monkeypatch.setattr(jmod.os, "write", write)
    j = _journal(tmp_path)
    j.mark("a", ["bm1"], "started")
    assert "empty" not in seen and seen and set(seen) == {"running"}, seen
    assert [p.name for p in (tmp_path / "state" / "runs").iterdir()] == [j.path.name]  # no temp left


def test_a_file_system_without_hard_links_still_gets_its_journal(tmp_path, monkeypatch):
    import errno

    import bmupgrade.journal as jmod

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(jmod.os, "link", no_links)
    j = _journal(tmp_path)
    j.mark("a", ["bm1"], "started")
    assert Journal.load(j.path).data["steps"]["a"]["nodes"]["bm1"]["state"] == "started"
    assert [p.name for p in (tmp_path / "state" / "runs").iterdir()] == [j.path.name]
