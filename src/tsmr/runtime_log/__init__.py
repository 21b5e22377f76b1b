"""The tsmr runtime event log: records (pure), replay (pure), store (files and locking)."""

from .records import Kind, Line, RecordError, canonical_json, check_record, classify, event
from .replay import ReplayReport, Replayer, replay
from .store import AppendResult, RecoveryResult, RuntimeLog, default_log_dir

__all__ = [
    "Kind",
    "Line",
    "RecordError",
    "canonical_json",
    "check_record",
    "classify",
    "event",
    "ReplayReport",
    "Replayer",
    "replay",
    "AppendResult",
    "RecoveryResult",
    "RuntimeLog",
    "default_log_dir",
]
