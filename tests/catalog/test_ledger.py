import threading

import pytest

from mrifoundry.catalog.ledger import Ledger


def test_upsert_counts_attempts_and_keeps_one_row(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.record("e1", "deid", "failed", exam_id="e1", reason="deid_error", message="KeyError")
    led.record("e1", "deid", "done", exam_id="e1")
    row = led.get("e1", "deid")
    assert (row.status, row.attempt, row.reason) == ("done", 2, None)
    assert led.to_arrow().num_rows == 1


def test_rejects_unknown_reason_and_status(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    with pytest.raises(ValueError):
        led.record("e1", "deid", "done", exam_id="e1", reason="not_a_code")
    with pytest.raises(ValueError):
        led.record("e1", "deid", "ok", exam_id="e1")


def test_concurrent_writers(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")

    def work(k):
        for i in range(50):
            led.record(f"s{k}-{i}", "convert", "done", exam_id=f"e{k}", item_kind="series")
    ts = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    assert led.to_arrow().num_rows == 200
    assert led.exams_with("convert", "done") == {"e0", "e1", "e2", "e3"}


def test_forget_exam_stage_only_drops_sub_items(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.record("e1", "continuity", "done", exam_id="e1")
    led.record("s1", "continuity", "rejected", exam_id="e1", item_kind="series", reason="missing_slice")
    led.forget_exam_stage("e1", "continuity")
    assert led.status("e1", "continuity") == "done" and led.status("s1", "continuity") is None


def test_failed_exams_lists_exams_with_any_failed_item(tmp_path):
    led = Ledger(tmp_path / "l.sqlite")
    led.record("e1", "deid", "done", exam_id="e1")
    led.record("s9", "convert", "failed", exam_id="e2", item_kind="series", reason="convert_error")
    led.record("e3", "retrieve", "rejected", exam_id="e3", reason="accession_not_found")
    assert led.failed_exams() == {"e2"}
