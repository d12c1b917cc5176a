"""The --report file: JSON Lines, one object a download."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ._exceptions import UsageError
from ._models import Result


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps(record, ensure_ascii=False), without building an encoder for every line (a Ray run
# writes millions): the C encoder, made once. Records are flat, so no check for cycles.
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encode: Any = (
    _make_c_encoder(
        None, _not_serializable, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
    )
    if _make_c_encoder is not None
    else None
)


def _dumps(record: dict[str, object]) -> str:
    if _c_encode is None:
        return json.dumps(record, ensure_ascii=False)
    return "".join(_c_encode(record, 0))


class ReportWriter:
    """Appends one JSON object per result (``url, path, status, bytes, attempts, error``).

    URLs and errors in results are already redacted, so no password reaches the file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._file: IO[str] | None = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise UsageError(f"cannot write report {self.path}: {exc.strerror or exc}") from exc

    def write(self, result: Result, **extra: object) -> None:
        if self._file is None:
            raise RuntimeError("report is closed")
        record = result.to_record()
        record.update(extra)
        self._file.write(_dumps(record) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
