import csv
import datetime as dt

import pytest

from mrifoundry.tasks.curation.selection.reports import ReportRules, filter_reports, normalise_protocol

ROWS = [
    # accession, mrn, date, modality, report type, expected decision, rule
    ("A1", "M1", "2017-03-01", "MR", "MRI LEFT SHOULDER WITHOUT AND WITH CONTRAST", "kept", None),
    ("A2", "M1", "2015-12-31", "MR", "MRI LEFT SHOULDER WITHOUT CONTRAST", "outside_window", None),
    ("A3", "M2", "2021-01-01", "MR", "MRI RIGHT KNEE WITHOUT CONTRAST", "outside_window", None),
    ("A4", "M2", "2018-06-06", "CT", "CT CHEST WITH CONTRAST", "not_mr", None),
    ("A5", "M3", "2019-01-02", "MR", "MRI BRAIN WITHOUT AND WITH CONTRAST", "excluded_protocol", "brain"),
    ("A6", "M3", "2019-01-03", "MR", "MRI ORBITS WITHOUT CONTRAST", "excluded_protocol", "orbit"),
    ("A7", "M4", "2019-01-04", "MR", "MRI NECK SOFT TISSUE", "excluded_protocol", "neck"),
    ("A8", "M4", "2019-01-05", "MR", "MRI IAC WITH CONTRAST", "excluded_protocol", "iac"),
    ("A9", "M5", "2020-12-31", "MR", "mri  lumbar spine without contrast.", "kept", None),
    ("A9", "M5", "2020-12-31", "MR", "MRI LUMBAR SPINE WITHOUT CONTRAST", "duplicate", None),
    ("", "M6", "2019-01-01", "MR", "MRI RIGHT KNEE WITHOUT CONTRAST", "unparseable", None),
    ("A10", "M6", "2016-01-01", "MR", "MRI FACE WITHOUT CONTRAST", "excluded_protocol", "face"),
    ("A11", "M7", "2016-01-01", "MR", "MRI PITUITARY WITH AND WITHOUT CONTRAST", "excluded_protocol", "pituitary"),
    ("A12", "M7", "2016-01-01", "MR", "MRI RIGHT HIP WITHOUT CONTRAST", "kept", None),
]


@pytest.fixture
def export(tmp_path):
    p = tmp_path / "reports.csv"
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["accession_number", "patient_mrn", "patient_name", "report_date", "modality", "report_type",
                    "report_text"])
        for acc, mrn, date, mod, rt, *_ in ROWS:
            w.writerow([acc, mrn, "DOE^JANE", date, mod, rt, "text"])
    return p


def test_decisions_match_rules(export):
    rules = ReportRules.load(None, dt.date(2016, 1, 1), dt.date(2020, 12, 31))
    res = filter_reports(export, rules)
    assert [(r["decision"], r["rule"]) for r in res.rows] == [(d, rule) for *_, d, rule in ROWS]
    assert res.counts["kept"] == 3 and sum(res.counts.values()) == len(ROWS)


def test_protocol_and_body_part(export):
    res = filter_reports(export, ReportRules.load(None, dt.date(2016, 1, 1), dt.date(2020, 12, 31)))
    kept = {r["accession_number"]: r for r in res.kept}
    assert kept["A9"]["protocol"] == "MRI LUMBAR SPINE WITHOUT CONTRAST"
    assert kept["A9"]["body_part"] == "lumbar_spine"
    assert kept["A1"]["body_part"] == "shoulder" and kept["A12"]["body_part"] == "hip"


def test_no_window_keeps_all_dates(export):
    res = filter_reports(export, ReportRules.load())
    assert res.counts.get("outside_window", 0) == 0


def test_missing_column_raises(tmp_path):
    p = tmp_path / "r.csv"
    p.write_text("accession_number,report_date\nA,2019-01-01\n")
    with pytest.raises(ValueError, match="patient_mrn"):
        filter_reports(p, ReportRules.load())


def test_normalise_protocol():
    assert normalise_protocol("  mri   left  shoulder ,") == "MRI LEFT SHOULDER"
