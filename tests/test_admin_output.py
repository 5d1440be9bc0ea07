"""The CLI's time column (server/admin/output.py when): unset fields print empty, every set time prints, the
epoch too, with its fractional seconds when it has any."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from server.admin.output import when


def test_a_period_starting_at_the_epoch_prints_its_time_not_a_blank() -> None:
    assert when(Timestamp(seconds=0, nanos=0)) == "1970-01-01 00:00:00Z"


def test_an_unset_field_prints_empty_and_a_set_one_its_utc_time() -> None:
    assert when(Timestamp(), present=False) == ""
    assert when(Timestamp(seconds=1_796_083_200)) == "2026-12-01 00:00:00Z"


def test_fractional_seconds_print_when_there_are_any_as_json_shows_them() -> None:
    assert when(Timestamp(seconds=1_764_549_000)) == "2025-12-01 00:30:00Z"
    assert when(Timestamp(seconds=1_764_549_000, nanos=250_000_000)) == "2025-12-01 00:30:00.250Z"
    assert when(Timestamp(seconds=1_764_549_000, nanos=1_000)) == "2025-12-01 00:30:00.000001Z"
    assert when(Timestamp(seconds=0, nanos=1)) == "1970-01-01 00:00:00.000000001Z"
