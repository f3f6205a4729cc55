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


def test_only_the_last_runs_are_kept(tmp_path):
    for i in range(history.KEEP + 15):
        history.record(tmp_path, "rb", {"a": {"bm1": float(i)}})
    runs = json.loads(history.path(tmp_path).read_text())["runbooks"]["rb"]["steps"]["a"]
    assert len(runs) == history.KEEP
    assert [r["t"]["bm1"] for r in runs] == [float(i) for i in range(15, history.KEEP + 15)]


def test_size_does_not_grow_with_the_number_of_runs(tmp_path):
    for _ in range(history.KEEP):
        history.record(tmp_path, "rb", {"s%d" % i: {"bm1": 1.5, "bm2": 1.25} for i in range(20)})
    size = history.path(tmp_path).stat().st_size
    for _ in range(3 * history.KEEP):
        history.record(tmp_path, "rb", {"s%d" % i: {"bm1": 1.5, "bm2": 1.25} for i in range(20)})
    assert history.path(tmp_path).stat().st_size <= size + 2  # the "updated" stamp may gain a digit


def test_retried_flag_is_recorded(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}, "b": {"bm1": 1.0}}, retried={"b"})
    steps = json.loads(history.path(tmp_path).read_text())["runbooks"]["rb"]["steps"]
    assert steps["a"][0]["retried"] is False and steps["b"][0]["retried"] is True


def test_non_numeric_and_negative_durations_are_ignored(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": None, "bm2": -1}, "b": {"bm1": True}, "c": {}})
    assert not history.path(tmp_path).exists()
    history.record(tmp_path, "rb", {"a": {"bm1": "x", "bm2": 2}})
    assert history.medians(tmp_path, "rb") == {"a": 2.0}


def test_corrupt_or_foreign_index_is_ignored_and_replaced(tmp_path):
    history.path(tmp_path).write_text("{not json")
    assert history.medians(tmp_path, "rb") == {}
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}})
    assert history.medians(tmp_path, "rb") == {"a": 1.0}
    history.path(tmp_path).write_text(json.dumps({"version": 99, "runbooks": {"rb": {}}}))
    assert history.medians(tmp_path, "rb") == {}
    history.path(tmp_path).write_text(json.dumps({"version": 1, "runbooks": {"rb": {"steps": {
        "a": [{"t": {"bm1": "x"}}, "junk", {"t": {"bm1": 4}}], "b": "junk"}}}}))
    assert history.medians(tmp_path, "rb") == {"a": 4}


def test_no_temporary_files_left_behind(tmp_path):
    history.record(tmp_path, "rb", {"a": {"bm1": 1.0}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "history.lock"]


def test_concurrent_records_lose_nothing(tmp_path):
    def worker(k):
        for _ in range(5):
            history.record(tmp_path, "rb", {"s%d" % k: {"bm1": 1.0}})

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    steps = json.loads(history.path(tmp_path).read_text())["runbooks"]["rb"]["steps"]
    assert {k: len(v) for k, v in steps.items()} == {"s%d" % k: 5 for k in range(4)}


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
