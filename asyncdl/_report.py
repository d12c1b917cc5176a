"""The --report file: JSON Lines, one object a download."""

from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ._exceptions import UsageError
from ._models import Result, Status


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


_encode_str = json.encoder.encode_basestring  # a JSON string, ensure_ascii=False (C when available)
_STATUS_JSON = {status: _encode_str(status.value) for status in Status}


def _line(result: Result) -> str | None:
    """The record of ``result`` as _dumps writes it, with a newline; made directly for the usual
    types (str or None, int; the C encoder writes an int subclass as a plain int, so they take the
    general way), None for anything else."""
    url, path, error = result.url, result.path, result.error
    if (
        url.__class__ is not str
        or not (path is None or path.__class__ is str)
        or not (error is None or error.__class__ is str)
        or result.bytes.__class__ is not int
        or result.attempts.__class__ is not int
        or result.status.__class__ is not Status
    ):
        return None
    path_json = "null" if path is None else _encode_str(path)
    error_json = "null" if error is None else _encode_str(error)
    head = (
        f'{{"url": {_encode_str(url)}, "path": {path_json}, "status": {_STATUS_JSON[result.status]}, '
        f'"bytes": {result.bytes}, "attempts": {result.attempts}, "error": {error_json}'
    )
    worker, shard = result.worker, result.shard
    if worker is None:
        return head + "}\n"
    if worker.__class__ is not int or not (shard is None or shard.__class__ is int):
        return None
    return f'{head}, "worker": {worker}, "shard": {"null" if shard is None else shard}}}\n'


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
        line = None if extra else _line(result)
        if line is None:
            record = result.to_record()
            record.update(extra)
            line = _dumps(record) + "\n"
        self._file.write(line)

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
