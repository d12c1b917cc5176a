"""``asyncdl daemon``: aria2's JSON-RPC methods as calls on a Downloader's live queue.

A thin face: the method table below turns each call into queue operations (``Downloader.add``,
the handles' ``pause``/``resume``/``cancel``, ``LiveQueue.move``) and the answers into aria2's wire
shapes (``_aria2``). The server side (HTTP, WebSocket, origin checks, body limits) is ``_web``.

Each download is known by a GID. Waiting, paused and active downloads live in the queue; stopped
ones are kept as small records (aria2's "download results"), at most ``max-download-result`` of
them, the oldest dropped first. With a session file, the waiting, paused and active downloads are
written to it (aria2's input-file format) shortly after every change and at exit; ``-i`` brings
them back, with their GIDs, and their partial files resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _aria2 as a2
from ._api import Downloader
from ._aria2 import RpcError, View
from ._models import Status
from ._queue import (
    ACTIVE,
    CANCELLED,
    EVENT_COMPLETE,
    EVENT_ERROR,
    EVENT_PAUSE,
    EVENT_START,
    EVENT_STOP,
    PAUSED,
    DownloadHandle,
)
from ._urls import redact_url
from ._version import __version__
from ._web import WebServer

DEFAULT_MAX_RESULTS = 1000
SESSION_SAVE_DELAY_S = 0.5  # changes within this time are written once
_NOTIFY = {
    EVENT_START: "aria2.onDownloadStart",
    EVENT_PAUSE: "aria2.onDownloadPause",
    EVENT_STOP: "aria2.onDownloadStop",
    EVENT_COMPLETE: "aria2.onDownloadComplete",
    EVENT_ERROR: "aria2.onDownloadError",
}


@dataclass(slots=True)
class _Tag:
    """What the daemon keeps on a handle: its GID and the options it was added with."""

    gid: str
    options: dict[str, str | list[str]] | None


@dataclass(frozen=True)
class DaemonConfig:
    root: Path
    secret: str
    session: Path | None = None
    max_results: int = DEFAULT_MAX_RESULTS


class Daemon:
    """The method table and the state behind it: GIDs, stopped results, the session file."""

    def __init__(self, dl: Downloader, config: DaemonConfig, *, log: Callable[[str], None]) -> None:
        self.dl = dl
        self.config = config
        self.root = str(config.root.resolve())
        self.max_results = config.max_results
        self._secret = config.secret.encode()
        self._log = log
        self.live: dict[str, DownloadHandle] = {}
        self.stopped: OrderedDict[str, tuple[View, dict[str, str | list[str]] | None]] = OrderedDict()
        self.stopped_total = 0
        self.session_id = secrets.token_hex(20)
        self.shutdown = asyncio.Event()
        self.server: WebServer | None = None
        self._save_task: asyncio.Task[None] | None = None
        # A write in a thread and the last one at exit never interleave in the temporary file.
        self._write_lock = threading.Lock()
        self._sending: set[asyncio.Future[None]] = set()
        self._methods: dict[str, Callable[[list[Any]], Any]] = {
            "aria2.addUri": self._add_uri,
            "aria2.remove": self._remove,
            "aria2.forceRemove": self._remove,
            "aria2.pause": self._pause,
            "aria2.forcePause": self._pause,
            "aria2.pauseAll": self._pause_all,
            "aria2.forcePauseAll": self._pause_all,
            "aria2.unpause": self._unpause,
            "aria2.unpauseAll": self._unpause_all,
            "aria2.tellStatus": self._tell_status,
            "aria2.getUris": self._get_uris,
            "aria2.getFiles": self._get_files,
            "aria2.tellActive": self._tell_active,
            "aria2.tellWaiting": self._tell_waiting,
            "aria2.tellStopped": self._tell_stopped,
            "aria2.changePosition": self._change_position,
            "aria2.changeOption": self._change_option,
            "aria2.changeGlobalOption": self._change_global_option,
            "aria2.getOption": self._get_option,
            "aria2.getGlobalOption": self._get_global_option,
            "aria2.getGlobalStat": self._get_global_stat,
            "aria2.purgeDownloadResult": self._purge,
            "aria2.removeDownloadResult": self._remove_result,
            "aria2.getVersion": lambda _: {"version": __version__, "enabledFeatures": ["HTTPS"]},
            "aria2.getSessionInfo": lambda _: {"sessionId": self.session_id},
            "aria2.saveSession": self._save_session,
            "aria2.shutdown": self._shutdown,
            "aria2.forceShutdown": self._shutdown,
            "system.listMethods": lambda _: list(a2.METHODS),
            "system.listNotifications": lambda _: list(a2.NOTIFICATIONS),
        }
        dl.queue.add_listener(self._on_event)

    # --- the wire ------------------------------------------------------------------------------------
    async def handle_body(self, body: bytes) -> tuple[int, str] | None:
        """One HTTP body or WebSocket message: (HTTP status, JSON answer)."""
        try:
            request = json.loads(body)
            # A lone surrogate (``"\ud800"``) is valid JSON but no text: it could not be written to
            # a file or the session. Deep nesting is refused rather than crash the parser.
            json.dumps(request, ensure_ascii=False).encode()
        except (ValueError, RecursionError):  # UnicodeError is a ValueError
            return 500, json.dumps(_error_answer(None, a2.PARSE_ERROR))
        if isinstance(request, list):  # a batch
            answers = [self._answer(item) for item in request]
            return 200, json.dumps([a for a, _ in answers])
        answer, status = self._answer(request)
        return status, json.dumps(answer)

    def _answer(self, request: Any) -> tuple[dict[str, Any], int]:
        if not isinstance(request, dict) or "id" not in request:
            return _error_answer(None, a2.INVALID_REQUEST), 400
        ident = request["id"]
        method = request.get("method")
        params = request.get("params", [])
        if not isinstance(method, str):
            return _error_answer(ident, a2.INVALID_REQUEST), 400
        if not isinstance(params, list):
            return _error_answer(ident, a2.INVALID_PARAMS), 500
        try:
            result = self.call(method, params)
        except RpcError as exc:
            return {"jsonrpc": "2.0", "id": ident, "error": {"code": 1, "message": str(exc)}}, 400
        return {"jsonrpc": "2.0", "id": ident, "result": result}, 200

    def call(self, method: str, params: list[Any]) -> Any:
        """Run one method (the secret checked first, as aria2); RpcError for aria2's error answer."""
        if method in a2.OPEN_METHODS:
            return self._methods[method](params)
        token, params = a2.split_token(params)
        if method == "system.multicall":
            # Each call in it carries its own secret.
            return self._multicall(params)
        if token is None or not hmac.compare_digest(token.encode(), self._secret):
            raise RpcError("Unauthorized")
        function = self._methods.get(method)
        if function is None:
            raise RpcError(f"No such method: {method}")
        return function(params)

    def _multicall(self, params: list[Any]) -> list[Any]:
        specs = a2.param(params, 0, list)
        answers: list[Any] = []
        for spec in specs:
            if not isinstance(spec, dict):
                answers.append({"code": 1, "message": "system.multicall expected struct."})
                continue
            name = spec.get("methodName")
            if not isinstance(name, str):
                answers.append({"code": 1, "message": "Missing methodName."})
                continue
            if name == "system.multicall":
                answers.append({"code": 1, "message": "Recursive system.multicall forbidden."})
                continue
            sub = spec.get("params")
            try:
                answers.append([self.call(name, sub if isinstance(sub, list) else [])])
            except RpcError as exc:
                answers.append({"code": 1, "message": str(exc)})
        return answers

    # --- events --------------------------------------------------------------------------------------
    def _on_event(self, handle: DownloadHandle, event: str) -> None:
        tag: _Tag | None = handle.tag
        if tag is None:
            return
        if handle.finished:
            self.live.pop(tag.gid, None)
            # As aria2: a download removed while it waited leaves no result, one that ran does.
            if not (event == EVENT_STOP and handle.forgotten):
                self._keep_result(tag, handle)
        self._notify(_NOTIFY[event], tag.gid)
        self.session_changed()

    def _notify(self, method: str, gid: str) -> None:
        if self.server is not None:
            text = json.dumps({"jsonrpc": "2.0", "method": method, "params": [{"gid": gid}]})
            task = asyncio.ensure_future(self.server.broadcast(text))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _keep_result(self, tag: _Tag, handle: DownloadHandle) -> None:
        self.stopped[tag.gid] = (self.view(handle), tag.options)
        self.stopped_total += 1
        self._trim_results()

    def _trim_results(self) -> None:
        while len(self.stopped) > self.max_results:
            self.stopped.popitem(last=False)  # the oldest first, as aria2

    # --- views ---------------------------------------------------------------------------------------
    def view(self, handle: DownloadHandle) -> View:
        tag: _Tag = handle.tag
        request = handle.request
        directory = os.path.join(self.root, request.dir) if request.dir else self.root
        path = ""
        if handle.result is not None and handle.result.path:
            path = handle.result.path
        elif handle.plan is not None and handle.plan.name:
            path = str(handle.plan.target)
        elif request.out:
            path = os.path.join(directory, request.out)
        progress = handle.progress
        status = handle.status
        error_code = error_message = None
        total = progress.total or 0
        done = progress.done
        if handle.result is not None:
            result = handle.result
            if status == CANCELLED:
                status, error_code, error_message = "removed", a2.ERROR_REMOVED, "Removed"
            elif result.status is Status.FAILED:
                status, error_code = "error", a2.error_code_of(result.error)
                error_message = result.error or ""
            else:
                status, error_code, error_message = "complete", a2.ERROR_FINISHED, ""
                total = done = result.bytes
        return View(
            gid=tag.gid,
            status=status,
            dir=directory,
            path=path,
            uris=tuple(map(redact_url, request.urls)),  # no password in an answer
            total=total,
            completed=done,
            speed=int(progress.rate_bps),
            connections=1 if status == ACTIVE else 0,
            error_code=error_code,
            error_message=error_message,
            # As aria2: a URI is "used" once tried; before the first attempt all are "waiting".
            spent_uris=1 if handle.finished or status == ACTIVE or done > 0 else 0,
        )

    def _find(self, params: list[Any]) -> tuple[str, DownloadHandle | None]:
        """The GID of the first parameter and its live download (None: a stopped one).

        A GID that is neither live nor stopped gets aria2's answer, whatever the method.
        """
        given = a2.param(params, 0, str)
        gid = a2.check_gid(given)
        handle = self.live.get(gid)
        if handle is None and gid not in self.stopped:
            raise RpcError(f"GID {given} is not found")
        return gid, handle

    def _view_of(self, gid: str, handle: DownloadHandle | None, missing: str) -> View:
        if handle is not None:
            return self.view(handle)
        stopped = self.stopped.get(gid)
        if stopped is None:
            raise RpcError(missing.format(gid=gid))
        return stopped[0]

    # --- methods -------------------------------------------------------------------------------------
    def add(
        self,
        uris: list[str],
        options: dict[str, str | list[str]],
        *,
        position: int | None = None,
        gid: str | None = None,
    ) -> str:
        """Queue a download (also for the session file at start); its GID."""
        request = a2.request_from(uris, options, self.root)
        paused = options.get("pause") == "true"
        kept = {k: v for k, v in options.items() if k not in ("gid", "pause")}
        if gid is None or gid in self.live or gid in self.stopped:
            gid = a2.new_gid(lambda g: g in self.live or g in self.stopped)
        # Tagged at once: the queue tells its listeners of a start only at the first attempt, later.
        handle = self.dl.add(request, position=position, paused=paused)
        handle.tag = _Tag(gid, kept or None)
        self.live[gid] = handle
        self.session_changed()
        return gid

    def _add_uri(self, params: list[Any]) -> str:
        uris = a2.param(params, 0, list)
        options = a2.option_strings(a2.param(params, 1, dict, required=False) or {})
        position = a2.param(params, 2, int, required=False)
        if position is not None and position < 0:
            raise RpcError("Position must be greater than or equal to 0.")
        return self.add([u for u in uris if isinstance(u, str)], options, position=position)

    def _remove(self, params: list[Any]) -> str:
        gid, handle = self._find(params)
        if handle is None or not handle.cancel():
            raise RpcError(f"Active Download not found for GID#{gid}")
        return gid

    def _pause(self, params: list[Any]) -> str:
        gid, handle = self._find(params)
        if handle is None or not handle.pause():
            raise RpcError(f"GID#{gid} cannot be paused now")
        return gid

    def _pause_all(self, params: list[Any]) -> str:
        for handle in list(self.live.values()):
            handle.pause()
        return a2.OK

    def _unpause(self, params: list[Any]) -> str:
        gid, handle = self._find(params)
        if handle is None or not handle.resume():
            raise RpcError(f"GID#{gid} cannot be unpaused now")
        self.session_changed()
        return gid

    def _unpause_all(self, params: list[Any]) -> str:
        for handle in self.dl.queue.waiting_items():
            handle.resume()
        self.session_changed()
        return a2.OK

    def _tell_status(self, params: list[Any]) -> dict[str, Any]:
        gid, handle = self._find(params)
        view = self._view_of(gid, handle, "No such download for GID#{gid}")
        return a2.status_dict(view, a2.keys_param(params, 1))

    def _get_uris(self, params: list[Any]) -> list[dict[str, str]]:
        gid, handle = self._find(params)
        if handle is None:
            raise RpcError(f"No URI data is available for GID#{gid}")
        return a2.uri_entries(self.view(handle))

    def _get_files(self, params: list[Any]) -> list[dict[str, Any]]:
        gid, handle = self._find(params)
        return a2.file_entries(self._view_of(gid, handle, "No file data is available for GID#{gid}"))

    def _tell_active(self, params: list[Any]) -> list[dict[str, Any]]:
        keys = a2.keys_param(params, 0)
        return [a2.status_dict(self.view(h), keys) for h in self.dl.queue.active if h.tag is not None]

    def _window(self, params: list[Any]) -> tuple[int, int, frozenset[str] | None]:
        offset = a2.param(params, 0, int)
        num = a2.param(params, 1, int)
        if num < 0:
            raise RpcError(
                "The integer parameter at 1 has invalid value: the value must be greater than or equal to 0."
            )
        return offset, num, a2.keys_param(params, 2)

    def _tell_waiting(self, params: list[Any]) -> list[dict[str, Any]]:
        offset, num, keys = self._window(params)
        # Every item of the queue came through the daemon (it alone adds to it): all have a GID.
        window = a2.paginate(self.dl.queue.waiting_items(), offset, num)
        return [a2.status_dict(self.view(h), keys) for h in window if h.tag is not None]

    def _tell_stopped(self, params: list[Any]) -> list[dict[str, Any]]:
        offset, num, keys = self._window(params)
        views = [view for view, _ in self.stopped.values()]
        return [a2.status_dict(v, keys) for v in a2.paginate(views, offset, num)]

    def _change_position(self, params: list[Any]) -> int:
        gid, handle = self._find(params)
        pos = a2.param(params, 1, int)
        how = a2.param(params, 2, str)
        queue = self.dl.queue
        if handle is None or handle.status not in ("waiting", PAUSED):
            raise RpcError(f"GID#{gid} not found in the waiting queue.")
        current = queue.position(handle)
        dest = a2.move_position(len(queue.waiting_items()), current, pos, how)
        queue.move(handle, dest)
        self.session_changed()
        return dest

    def _change_option(self, params: list[Any]) -> str:
        gid, handle = self._find(params)
        options = a2.option_strings(a2.param(params, 1, dict))
        if handle is None:
            raise RpcError(f"Cannot change option for GID#{gid}")
        tag: _Tag = handle.tag
        current = tag.options or {}
        merged = {**current, **a2.unhidden_options(options, current)}
        request = a2.request_from(handle.request.urls, merged, self.root)
        if handle.plan is None:
            handle.request = request  # not started yet: every option applies
        tag.options = merged or None
        self.session_changed()
        return a2.OK

    def _change_global_option(self, params: list[Any]) -> str:
        options = a2.option_strings(a2.param(params, 0, dict))
        jobs = a2.positive_int_option(options, "max-concurrent-downloads")
        rate = a2.rate_option(options, "max-overall-download-limit")
        results = a2.positive_int_option(options, "max-download-result")
        if jobs is not None:
            self.dl.jobs = jobs
        if rate is not None:
            self.dl.limit_rate = rate or None
        if results is not None:
            self.max_results = results
            self._trim_results()
        return a2.OK

    def _get_option(self, params: list[Any]) -> dict[str, Any]:
        gid, handle = self._find(params)
        if handle is not None:
            options, view = (handle.tag.options or {}), self.view(handle)
        elif gid in self.stopped:
            view, stored = self.stopped[gid]
            options = stored or {}
        else:
            raise RpcError(f"Cannot get option for GID#{gid}")
        return {**a2.shown_options(options), "dir": view.dir}

    def global_options(self) -> dict[str, str]:
        return {
            "dir": self.root,
            "max-concurrent-downloads": str(self.dl.jobs),
            "max-overall-download-limit": str(self.dl.limit_rate or 0),
            "max-download-result": str(self.max_results),
            "save-session": str(self.config.session) if self.config.session else "",
        }

    def _get_global_option(self, params: list[Any]) -> dict[str, str]:
        return self.global_options()  # never the secret

    def _get_global_stat(self, params: list[Any]) -> dict[str, str]:
        queue = self.dl.queue
        return a2.global_stat(
            speed=int(sum(h.progress.rate_bps for h in queue.active)),
            active=len(queue.active),
            waiting=len(queue.waiting_items()),
            stopped=len(self.stopped),
            stopped_total=self.stopped_total,
        )

    def _purge(self, params: list[Any]) -> str:
        self.stopped.clear()
        return a2.OK

    def _remove_result(self, params: list[Any]) -> str:
        gid = a2.check_gid(a2.param(params, 0, str))
        if self.stopped.pop(gid, None) is None:
            raise RpcError(f"Could not remove download result of GID#{gid}")
        return a2.OK

    def _shutdown(self, params: list[Any]) -> str:
        # After the answer is sent (aria2 waits a moment too).
        asyncio.get_running_loop().call_later(0.2, self.shutdown.set)
        return a2.OK

    # --- the session file ----------------------------------------------------------------------------
    def session_entries(self) -> list[a2.SessionEntry]:
        """Active, waiting and paused downloads, in queue order (active first), with their options."""
        queue = self.dl.queue
        entries = []
        for handle in queue.items():
            tag: _Tag | None = handle.tag
            if tag is None or handle.finished:
                continue
            options: dict[str, str | list[str]] = {"gid": tag.gid, **(tag.options or {})}
            if handle.status == PAUSED or handle.pausing:
                options["pause"] = "true"
            entries.append(a2.SessionEntry(list(handle.request.urls), options))
        return entries

    def save_session_now(self) -> None:
        if self.config.session is not None:
            self._write_entries(self.session_entries())

    def _save_session(self, params: list[Any]) -> str:
        if self.config.session is None:
            raise RpcError("Filename is not given.")
        try:
            self.save_session_now()
        except OSError:
            raise RpcError(f"Failed to serialize session to '{self.config.session}'.") from None
        return a2.OK

    def session_changed(self) -> None:
        """Write the session file soon (changes close together are written once)."""
        if self.config.session is None or (self._save_task is not None and not self._save_task.done()):
            return
        self._save_task = asyncio.ensure_future(self._save_soon())

    async def _save_soon(self) -> None:
        await asyncio.sleep(SESSION_SAVE_DELAY_S)
        try:
            # The entries are taken here, in the loop; only the writing goes to a thread.
            entries = self.session_entries()
            await asyncio.to_thread(self._write_entries, entries)
        except OSError as exc:
            self._log(f"cannot write the session file: {exc}")

    def _write_entries(self, entries: list[a2.SessionEntry]) -> None:
        path = self.config.session
        assert path is not None
        with self._write_lock:
            # Written whole, then renamed: a crash never leaves half a session file. The temporary
            # file is a new one (mode 0600, never a file or link someone put there beforehand).
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as file:
                    file.write(a2.format_session(entries))
                os.replace(temp, path)
            except BaseException:
                os.unlink(temp)
                raise

    def load_session(self, text: str) -> int:
        """Queue the downloads of a session (or input) file; how many."""
        count = 0
        for entry in a2.parse_session(text):
            gid = entry.options.get("gid")
            kept_gid = gid if isinstance(gid, str) and _is_gid(gid) else None
            try:
                self.add(entry.uris, entry.options, gid=kept_gid)
            except RpcError as exc:
                shown = " ".join(map(redact_url, entry.uris))
                self._log(f"session entry {shown!r} skipped: {exc}")
                continue
            count += 1
        return count

    async def aclose(self) -> None:
        if self._save_task is not None:
            self._save_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._save_task


def _is_gid(text: str) -> bool:
    try:
        a2.check_gid(text)
    except RpcError:
        return False
    return True


def _error_answer(ident: Any, error: a2.ProtocolError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "error": {"code": error.code, "message": str(error)}}


async def serve(
    dl: Downloader,
    config: DaemonConfig,
    *,
    host: str,
    port: int,
    allow_origin_all: bool,
    input_text: str | None,
    log: Callable[[str], None],
    on_listening: Callable[[int], None],
) -> None:
    """Run the daemon until ``aria2.shutdown`` (or cancellation); the session is saved at the end."""
    daemon = Daemon(dl, config, log=log)
    if input_text is not None:
        daemon.load_session(input_text)
    server = WebServer(
        daemon.handle_body,
        page_package="asyncdl/web",
        allow_origin_all=allow_origin_all,
        listen_all=host not in ("127.0.0.1", "::1", "localhost"),
    )
    daemon.server = server
    try:
        on_listening(await server.start(host, port))
        await daemon.shutdown.wait()
    finally:
        await server.aclose()
        await daemon.aclose()
        await dl.queue.aclose()  # running downloads stop, their bytes kept, and count as waiting
        try:
            daemon.save_session_now()
        except OSError as exc:
            log(f"cannot write the session file: {exc}")
