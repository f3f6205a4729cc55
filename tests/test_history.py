"""bmupgrade.history: the durations index behind --deadline (no timing assertions)."""

from __future__ import annotations

import json
import threading

from bmupgrade import history


def test_empty_state_dir_gives_no_estimates(tmp_path):
    assert history.medians(tmp_path, "rb") == {}
    assert history.medians(tmp_path / "missing", "rb") == {}


def test_median_of_the_slowest_node_per_run(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0, "bm2": 3.0}, "b": {"bm1": 2.0}})
    history.record(tmp_path, "rb", {"a": {"bm1": 5.0, "bm2": 4.0}})
    history.record(tmp_path, "rb", {"a": {"bm1": 2.0}})
    assert history.medians(tmp_path, "rb") == {"a": 3.0, "b": 2.0}


def test_runbooks_are_kept_apart(tmp_path):
    history.record(tmp_path, "one", {"a": {"bm1": 1.0}})
    history.record(tmp_path, "two", {"a": {"bm1": 9.0}})
    assert history.medians(tmp_path, "one") == {"a": 1.0}
    assert history.medians(tmp_path, "two") == {"a": 9.0}
    assert history.medians(tmp_path, "three") == {}


def lines(tmp_path, name="rb") -> list[dict]:
    return [json.loads(line) for line in history.path(tmp_path, name).read_text().splitlines()]


def test_only_the_last_runs_are_kept(tmp_path):
    for i in range(history.KEEP + 15):
        history.record(tmp_path, "rb", {"a": {"bm1": float(i)}})
    assert history.medians(tmp_path, "rb") == {"a": (15 + history.KEEP + 14) / 2}  # the median of the last KEEP
    kept = lines(tmp_path)
    assert history.KEEP <= len(kept) <= 2 * history.KEEP
    assert [r["steps"]["a"]["t"]["bm1"] for r in kept][-1] == float(history.KEEP + 14)


def test_size_does_not_grow_with_the_number_of_runs(tmp_path):
    sizes = []
    for i in range(6 * history.KEEP):
        history.record(tmp_path, "rb", {"s%d" % i: {"bm1": 1.5, "bm2": 1.25} for i in range(20)})
        sizes.append(history.path(tmp_path, "rb").stat().st_size)
    assert max(sizes[2 * history.KEEP:]) <= max(sizes[:2 * history.KEEP + 1])


def test_recording_appends_one_line_and_does_not_read_the_others(tmp_path, monkeypatch):
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}})
    monkeypatch.setattr(history.json, "loads", lambda *a, **k: (_ for _ in ()).throw(AssertionError("parsed")))
    history.record(tmp_path, "rb", {"a": {"bm1": 2.0}})
    monkeypatch.undo()
    assert [r["steps"]["a"]["t"]["bm1"] for r in lines(tmp_path)] == [1.0, 2.0]


def test_retried_flag_is_recorded(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}, "b": {"bm1": 1.0}}, retried={"b"})
    steps = lines(tmp_path)[0]["steps"]
    assert steps["a"]["retried"] is False and steps["b"]["retried"] is True


def test_non_numeric_and_negative_durations_are_ignored(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": None, "bm2": -1}, "b": {"bm1": True}, "c": {}})
    assert not history.path(tmp_path, "rb").exists()
    history.record(tmp_path, "rb", {"a": {"bm1": "x", "bm2": 2}})
    assert history.medians(tmp_path, "rb") == {"a": 2.0}


def test_corrupt_or_foreign_lines_are_ignored(tmp_path):
    f = history.path(tmp_path, "rb")
    f.parent.mkdir(parents=True)
    f.write_text("{not json\n" + json.dumps({"runbook": "other", "steps": {"a": {"t": {"bm1": 9}}}}) + "\n")
    assert history.medians(tmp_path, "rb") == {}
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}})
    assert history.medians(tmp_path, "rb") == {"a": 1.0}
    with f.open("a") as out:
        out.write(json.dumps({"runbook": "rb", "steps": {"a": {"t": {"bm1": "x"}}, "b": "junk"}}) + "\n")
        out.write('{"runbook": "rb", "steps": {"a": {"t": {"bm1": 4')  # torn last line
    assert history.medians(tmp_path, "rb") == {"a": 1.0}


def test_no_temporary_files_left_behind(tmp_path):
    for _ in range(2 * history.KEEP + 1):  # a compaction included
        history.record(tmp_path, "rb", {"a": {"bm1": 1.0}})
    assert sorted(p.name for p in (tmp_path / "history").iterdir()) == [".lock", history.path(tmp_path, "rb").name]


def test_concurrent_records_lose_nothing(tmp_path):
    def worker(k):
        for _ in range(5):
            history.record(tmp_path, "rb", {"s%d" % k: {"bm1": 1.0}})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    counts = {}
    for r in lines(tmp_path):
        for sid in r["steps"]:
            counts[sid] = counts.get(sid, 0) + 1
    assert counts == {"s%d" % k: 5 for k in range(4)}


def test_from_journal_takes_done_nodes_and_attempts():
    data = {"steps": {
        "a": {"nodes": {"bm1": {"state": "done", "duration": 1.5, "attempts": 1},
                        "bm2": {"state": "failed", "duration": 0.2, "attempts": 1}}},
        "b": {"nodes": {"bm1": {"state": "done", "duration": 2.0, "attempts": 2}}},
        "c": {"nodes": {"bm1": {"state": "skipped"}}},
    }}
    durations, retried = history.from_journal(data)
    assert durations == {"a": {"bm1": 1.5}, "b": {"bm1": 2.0}}
    assert retried == {"b"}
