"""The classifier's errors; each message says what is wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path

from models.errors import PaidanError


class ClassifierError(PaidanError):
    """Base of the classifier's own errors."""


class TrainingDataError(ClassifierError):
    """A CSV that cannot be used for training or evaluation; names the file and, if any, the row."""

    def __init__(self, path: Path | str, problem: str, row: int | None = None, line: int | None = None):
        self.path, self.problem, self.row, self.line = str(path), problem, row, line
        where = self.path
        if row is not None:
            where += f", row {row}"
            if line is not None and line != row + 1:
                where += f" (line {line})"
        super().__init__(f"{where}: {problem}")


class ModelNotFound(ClassifierError):
    """No model directory (or no active model) where one was expected."""


class ModelIncompatible(ClassifierError):
    """A model directory this code cannot load safely (format, library versions, checksums)."""
