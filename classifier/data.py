"""Labelled examples from CSV files: a ``text`` column and one or more label columns (heads).

Every problem is a :class:`TrainingDataError` naming the file and the row (data rows count from 1
after the header; the physical line is added when a multi-line text makes them differ).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from classifier.errors import TrainingDataError

# The default taxonomy (DESIGN.md). Generic training accepts any labels; paidan's own data must use these.
TAXONOMY: dict[str, tuple[str, ...]] = {
    "type": ("inquiry", "incident", "complaint", "suggestion", "request"),
    "category": ("technical", "service", "transaction", "product"),
    "priority": ("P0", "P1", "P2", "P3"),
}
SERVICE_HEADS = tuple(TAXONOMY)


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    labels: Mapping[str, str] = field(default_factory=dict)  # head -> label; a head may be absent
    source: str = ""  # "file.csv:row" or "correction:id", for messages about this example


def read_csv(
    path: Path | str,
    heads: Sequence[str],
    *,
    text_column: str = "text",
    label_sets: Mapping[str, Collection[str]] | None = None,
) -> list[Example]:
    """Examples from one CSV; every head in ``heads`` must be a column with a label on every row."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TrainingDataError(path, f"cannot read file: {e.strerror or e}") from e
    content = _decode(path, raw)
    reader = csv.DictReader(io.StringIO(content, newline=""))
    try:
        columns = reader.fieldnames or []
    except csv.Error as e:
        raise TrainingDataError(path, f"unreadable CSV header: {e}", row=0, line=1) from e
    if not columns:
        raise TrainingDataError(path, "empty file: expected a header with a 'text' column")
    for needed in (text_column, *heads):
        if needed not in columns:
            raise TrainingDataError(path, f"missing column {needed!r} (the header has: {', '.join(columns)})")
    examples: list[Example] = []
    row = 0
    start_line = 2
    while True:
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            raise TrainingDataError(path, f"malformed CSV: {e}", row=row + 1, line=start_line) from e
        row += 1
        if None in record or any(v is None for v in record.values()):
            raise TrainingDataError(
                path, f"the row has a different number of fields than the header ({len(columns)})", row, start_line
            )
        text = record[text_column]
        if not text.strip():
            raise TrainingDataError(path, "empty text", row, start_line)
        labels: dict[str, str] = {}
        for head in heads:
            label = record[head].strip()
            if not label:
                raise TrainingDataError(path, f"empty {head!r} label", row, start_line)
            allowed = (label_sets or {}).get(head)
            if allowed is not None and label not in allowed:
                raise TrainingDataError(
                    path, f"unknown {head} label {label!r} (expected one of: {', '.join(allowed)})", row, start_line
                )
            labels[head] = label
        examples.append(Example(text, labels, f"{path.name}:{row}"))
        start_line = reader.line_num + 1
    return examples


def read_csvs(paths: Iterable[Path | str], heads: Sequence[str], **kwargs) -> list[Example]:
    out: list[Example] = []
    for path in sorted(Path(p) for p in paths):
        out.extend(read_csv(path, heads, **kwargs))
    return out


def csv_columns(path: Path | str) -> list[str]:
    """The header of a CSV (decoding errors reported like read_csv's)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise TrainingDataError(path, f"cannot read file: {e.strerror or e}") from e
    first = _decode(path, raw).split("\n", 1)[0]
    return next(csv.reader([first]), [])


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        prefix = raw[: e.start].decode("utf-8-sig", errors="replace")
        line = prefix.count("\n") + 1
        # A sentinel character makes the record that holds the bad byte the last one parsed.
        records = list(csv.reader(io.StringIO(prefix + "x", newline="")))
        row = max(len(records) - 1, 0)  # header is record 0
        raise TrainingDataError(
            path, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start}); save the file as UTF-8", row, line
        ) from e


def data_sha256(paths: Iterable[Path | str]) -> str:
    """One hash over the files' names and bytes, in sorted order (the training-data fingerprint)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def csv_files(directory: Path | str) -> list[Path]:
    directory = Path(directory)
    return sorted(p for p in directory.glob("*.csv") if p.is_file())
