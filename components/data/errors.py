"""Errors raised by the data step."""

from __future__ import annotations

from pathlib import Path

from vinspect.errors import VinspectError


class DatasetError(VinspectError, ValueError):
    """Bad input data: names the file (and line, when there is one) and what to do next.

    Attributes:
        file: The offending file, relative to the export root where possible.
        line: 1-based line number inside ``file``, if the problem is on one line.
        reason: The message without the location prefix.
        exit_code: 2, bad input: what every ``vinspect data|cvat|review`` command exits with.
    """

    exit_code = 2

    def __init__(self, reason: str, *, file: str | Path | None = None, line: int | None = None):
        self.reason = reason
        self.file = str(file) if file is not None else None
        self.line = line
        where = ""
        if self.file is not None:
            where = f"{self.file}:{line}: " if line is not None else f"{self.file}: "
        super().__init__(f"{where}{reason}")


class CVATError(VinspectError, RuntimeError):
    """A CVAT server refused, failed or did not answer in time.

    Attributes:
        exit_code: 2, what every ``vinspect data pull``, ``cvat setup`` and ``review push`` exits with.
    """

    exit_code = 2
