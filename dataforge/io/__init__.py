"""Reading and writing records, by job. Nothing here holds a whole file in memory.

- `formats`: outside shapes (Self-Instruct seeds, Alpaca, chat) to Records and back;
- `containers`: JSON Lines / JSON array / Parquet / saved HF folder, gzip, format detection;
- `readers`: `read_records`, where a bad item goes to a `RejectSink` (``rejects``) and never aborts a run;
- `writers`: `RecordWriter` and `atomic_open`, atomic (temp file, fsync, rename);
- `journal`: the append-and-fsync `Journal` a long run resumes from.

The names below are the package's interface: ``from dataforge.io import read_records`` keeps working.
"""

from .containers import CONTAINERS, check_input, count_items, detect_container, detect_format
from .formats import (IN_FORMATS, NORMALISERS, OUT_FORMATS, RECORD_KEYS, BadLine, detect_object_format, from_alpaca,
                      from_chat, from_record, from_seed_task, parquet_schema, to_alpaca, to_chat, to_flat)
from .journal import Journal, JournalReader, repair_tail
from .readers import ReadStats, read_records
from .rejects import RejectSink
from .writers import RecordWriter, atomic_open, write_json_atomic, write_records, write_text_atomic

__all__ = [
    "CONTAINERS", "check_input", "count_items", "detect_container", "detect_format",
    "IN_FORMATS", "NORMALISERS", "OUT_FORMATS", "RECORD_KEYS", "BadLine", "detect_object_format", "from_alpaca",
    "from_chat", "from_record", "from_seed_task", "parquet_schema", "to_alpaca", "to_chat", "to_flat",
    "Journal", "JournalReader", "repair_tail", "ReadStats", "read_records", "RejectSink",
    "RecordWriter", "atomic_open", "write_json_atomic", "write_records", "write_text_atomic",
]
