"""The pieces of ``tunefleet jobs watch`` and the demo that need no fleet: the sparkline,
events → ordered step points, and the demo's CRM export (PII planted, duplicates added)."""

from __future__ import annotations

import csv
import io

from gateway.cli.demo import MAPPING, PII, compare_table, export_csv
from gateway.cli.watch import sparkline, step_points


def test_sparkline_scales_to_the_range() -> None:
    assert sparkline([]) == ""
    assert sparkline([2.0, 2.0, 2.0]) == "▄▄▄"
    line = sparkline([5.0, 4.0, 3.0, 1.0])
    assert line[0] == "█" and line[-1] == "▁" and len(line) == 4
    assert len(sparkline([float(i) for i in range(100)], width=40)) == 40


def test_step_points_orders_and_dedups_events() -> None:
    events = [  # the API lists newest first; a step may be reported twice after a resume
        {"data": {"step": 3, "train_loss": 1.0}},
        {"message": "started", "data": None},
        {"data": {"step": 2, "train_loss": 2.0}},
        {"data": {"step": 2, "train_loss": 2.5}},
        {"data": {"step": 1, "train_loss": 3.0}},
    ]
    points = step_points(events)
    assert [p["step"] for p in points] == [1, 2, 3]
    assert points[1]["train_loss"] == 2.0  # the newest report of step 2 wins


def test_demo_export_is_a_salesforce_case_csv_with_pii_and_duplicates() -> None:
    rows = list(csv.DictReader(io.StringIO(export_csv(n=40, seed=1).decode())))
    assert {k for k in MAPPING if not k.startswith("$")} <= set(rows[0])  # "$system": a text
    assert all(r["Id"].startswith("500") for r in rows)
    text = "\n".join(r["Description"] for r in rows)
    assert all(p in text for p in PII)
    keys = [tuple(r.values()) for r in rows]
    assert len(keys) - len(set(keys)) == 8


def test_compare_table_lists_numeric_metrics() -> None:
    table = compare_table(
        {"base": {"accuracy": 0.25, "n": 8, "task": "x"}, "tuned": {"accuracy": 0.75, "n": 8}}
    )
    assert table.row_count == 1 and table.title == "held-out cases: 8"
