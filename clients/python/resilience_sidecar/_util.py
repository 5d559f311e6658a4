from __future__ import annotations

import datetime as _dt
from typing import Optional, Union

from google.protobuf import duration_pb2, timestamp_pb2

Seconds = Union[float, int, _dt.timedelta]


def seconds(value: Optional[Seconds]) -> Optional[float]:
    """A duration given as seconds or a timedelta, as float seconds."""
    if value is None:
        return None
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    return float(value)


def duration(value: Optional[Seconds]) -> Optional[duration_pb2.Duration]:
    """A google.protobuf.Duration, or None for None (the sidecar's default)."""
    s = seconds(value)
    if s is None:
        return None
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(round(s * 1e9)))
    return d


def durations(**values: Optional[Seconds]) -> "dict[str, duration_pb2.Duration]":
    """Duration fields for a message constructor, leaving out the unset ones."""
    out = {}
    for name, value in values.items():
        d = duration(value)
        if d is not None:
            out[name] = d
    return out


def to_datetime(ts: timestamp_pb2.Timestamp) -> Optional[_dt.datetime]:
    """A timezone-aware UTC datetime, or None for an unset (zero) timestamp."""
    if ts.seconds == 0 and ts.nanos == 0:
        return None
    return ts.ToDatetime(tzinfo=_dt.timezone.utc)
