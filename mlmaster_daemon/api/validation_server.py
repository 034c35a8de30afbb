"""MLE-bench's validation server, for agent containers: `POST /validate` and `GET /health` on a
loopback TCP port, apart from the Unix-socket API.

`POST /validate` takes a submission as multipart form field `file` and checks it against a task
the daemon knows, named by the header `exp-id` (a competition id or a task id) or else by
`COMPETITION_ID` in the daemon's environment. Like MLE-bench's server it grades the file on the
hidden answers and says only whether that worked: the score never leaves the daemon. Valid and
invalid both answer 200 with MLE-bench's `result` string, plus `is_valid`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from aiohttp import BodyPartReader, web
from aiohttp.web_urldispatcher import _default_expect_handler

from mlmaster_daemon.api import loopback
from mlmaster_daemon.config import ValidationServerConfig
from mlmaster_daemon.errors import GradingError, InvalidTaskDir, MlmasterError
from mlmaster_daemon.logs import get_logger
from mlmaster_daemon.store import Store, TaskRecord
from mlmaster_daemon.tasks.spec import TaskSpec

log = get_logger("mlmaster.validation")

VALID = "Submission is valid."
INVALID = (
    "Submission invalid! The attempt to grade the submission has resulted in the following "
    "error message:\n"
)
UNEXPECTED = "An unexpected error occurred."
EXP_ID_HEADER = "exp-id"
COMPETITION_ENV = "COMPETITION_ID"
MIB = 1024 * 1024
CHUNK_BYTES = MIB
# Room for the multipart boundaries and part headers around the file in Content-Length.
MULTIPART_OVERHEAD = 64 * 1024
# Gradings at once: each holds a submission and the answers in memory.
GRADING_SLOTS = 2
# Ids named in an "unknown competition" answer, per kind.
IDS_SHOWN = 20


class UnknownCompetition(MlmasterError):
    """`exp-id` (or COMPETITION_ID) names no competition or task the daemon knows."""

    code = "unknown_competition"


class BadUpload(MlmasterError):
    """The request carries no file in multipart form field `file`."""

    code = "bad_upload"


class UploadTooLarge(MlmasterError):
    code = "upload_too_large"
    status = 413


def competition_ids(spec: TaskSpec) -> set[str]:
    """The names a task answers to as a competition: its folder's (the one holding prepared/)
    and its MLE-bench id when known."""
    return {name for name in (spec.root.name, spec.competition_id) if name}


def pick_task(tasks: list[TaskRecord], exp_id: str) -> TaskRecord:
    """The task `exp_id` names: the task with that id, else the newest task of that competition.

    Raises `UnknownCompetition` listing the ids the daemon knows.
    """
    for task in tasks:
        if task.id == exp_id:
            return task
    matching = [task for task in tasks if exp_id in competition_ids(task.spec)]
    if matching:
        return max(matching, key=lambda task: (task.created_at, task.id))
    asked = (f"no competition or task {exp_id!r} is known to this daemon" if exp_id else
             f"no competition given: send the header `{EXP_ID_HEADER}: <competition id>` or "
             f"start the daemon with {COMPETITION_ENV} set")
    raise UnknownCompetition(f"{asked}; {_known(tasks)}")


def _known(tasks: list[TaskRecord]) -> str:
    if not tasks:
        return "it has no tasks yet: submit the competition folder with `mlmaster submit` first"
    competitions = sorted({name for task in tasks for name in competition_ids(task.spec)})
    task_ids = [task.id for task in reversed(tasks)]
    return (f"known competition ids: {_listing(competitions)}; "
            f"task ids (newest first): {_listing(task_ids)}")


def _listing(names: list[str]) -> str:
    more = f" and {len(names) - IDS_SHOWN} more" if len(names) > IDS_SHOWN else ""
    return ", ".join(names[:IDS_SHOWN]) + more


def judge(spec: TaskSpec, submission: Path) -> str | None:
    """None when the submission is valid, else what is wrong with it. Blocking (pandas).

    With hidden answers the submission is graded on them (the grader checks the format
    first) and any failure is the answer; without, the format check against the sample
    submission is all there is. Raises `InvalidTaskDir` when the task's own files are broken.
    """
    # pandas and scikit-learn load here, in a worker thread, at the first validation.
    from mlmaster_daemon.tasks import grading, validation

    try:
        grading.answers_path(spec)
    except GradingError:
        return validation.validate_submission(spec, submission)
    try:
        grading.grade(spec, submission)
    except GradingError as exc:
        return exc.message
    except InvalidTaskDir:
        raise
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None


def verdict(problem: str | None) -> dict[str, Any]:
    """MLE-bench's answer for a checked submission, and `is_valid`; never a score."""
    if problem is None:
        return {"result": VALID, "is_valid": True}
    return {"result": INVALID + problem, "is_valid": False}


def failure(error: str, details: str, status: int) -> web.Response:
    return web.json_response({"error": error, "details": details}, status=status)


class ValidationServer:
    """The handlers, over the daemon's store; uploads are spooled to files in `upload_dir`."""

    def __init__(self, store: Store, upload_dir: Path, max_upload_mb: int,
                 environ: Mapping[str, str] = os.environ) -> None:
        self.store = store
        self.upload_dir = upload_dir
        self.max_upload_bytes = max_upload_mb * MIB
        # Read at each request, so COMPETITION_ID may change while the daemon runs.
        self.environ = environ
        self._grading = asyncio.Semaphore(GRADING_SLOTS)

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self.health)
        app.router.add_post("/validate", self.validate, expect_handler=self.expect)
        return app

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "running"})

    async def expect(self, request: web.Request) -> web.StreamResponse | None:
        """Refuse an upload its Content-Length says is too large before the client sends it
        (curl asks `Expect: 100-continue` for bodies over 1 MiB)."""
        if self._declared_too_large(request):
            return self._too_large()
        await _default_expect_handler(request)
        return None

    async def validate(self, request: web.Request) -> web.Response:
        started = time.monotonic()
        exp_id = (request.headers.get(EXP_ID_HEADER, "").strip()
                  or self.environ.get(COMPETITION_ENV, "").strip())
        path: Path | None = None
        try:
            task = pick_task(await self.store.list_tasks(), exp_id)
            if self._declared_too_large(request):
                return self._too_large()
            path, filename = await self._receive(request)
            async with self._grading:
                problem = await asyncio.to_thread(judge, task.spec, path)
        except UnknownCompetition as exc:
            return failure("Unknown competition.", exc.message, 400)
        except BadUpload as exc:
            return failure("No submission file.", exc.message, 400)
        except UploadTooLarge:
            return self._too_large()
        except Exception as exc:
            log.exception("validation failed", exp_id=exp_id)
            return failure(UNEXPECTED, f"{type(exc).__name__}: {exc}", 500)
        finally:
            if path is not None:
                await asyncio.to_thread(path.unlink, missing_ok=True)
        if problem is not None:
            # Name the file the client sent, not where it was spooled.
            problem = problem.replace(str(path), filename)
        log.info("submission validated", exp_id=exp_id, task_id=task.id, valid=problem is None,
                 duration_s=round(time.monotonic() - started, 3))
        return web.json_response(verdict(problem))

    def _declared_too_large(self, request: web.Request) -> bool:
        declared = request.content_length
        return declared is not None and declared > self.max_upload_bytes + MULTIPART_OVERHEAD

    def _too_large(self) -> web.Response:
        limit_mb = self.max_upload_bytes // MIB
        return failure("Submission too large.",
                       f"the upload is over the limit of {limit_mb} MB "
                       "(validation_server.max_upload_mb in the daemon's config)", 413)

    async def _receive(self, request: web.Request) -> tuple[Path, str]:
        """Spool form field `file` to a new file in `upload_dir`: (its path, the client's
        file name). Raises `BadUpload` or `UploadTooLarge`, leaving nothing behind."""
        usage = "send it as multipart form field `file`: curl -X POST -F file=@submission.csv"
        if request.content_type != "multipart/form-data":
            raise BadUpload(f"the request is {request.content_type}, not a form upload; {usage}")
        try:
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    raise BadUpload(f"the form has no field `file`; {usage}")
                if isinstance(part, BodyPartReader) and part.name == "file":
                    break
        except ValueError as exc:
            raise BadUpload(f"the form upload is malformed ({exc}); {usage}") from exc
        filename = part.filename or "the uploaded file"
        path = await asyncio.to_thread(self._spool_path)
        try:
            out: IO[bytes] = await asyncio.to_thread(path.open, "wb")
            try:
                await self._copy(part, out)
            finally:
                await asyncio.to_thread(out.close)
        except BaseException:
            await asyncio.to_thread(path.unlink, missing_ok=True)
            raise
        return path, filename

    async def _copy(self, part: BodyPartReader, out: IO[bytes]) -> None:
        received = 0
        while chunk := await part.read_chunk(CHUNK_BYTES):
            received += len(chunk)
            if received > self.max_upload_bytes:
                raise UploadTooLarge("too large")
            await asyncio.to_thread(out.write, chunk)

    def _spool_path(self) -> Path:
        self.upload_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix="submission-", suffix=".csv",
                                        dir=self.upload_dir)
        os.close(handle)
        return Path(name)


def address(config: ValidationServerConfig) -> str:
    """The URL agents post to."""
    return loopback.url(config.host, config.port, "validate")


async def start_validation_server(store: Store, config: ValidationServerConfig,
                                  upload_dir: Path, shutdown_timeout: float) -> web.AppRunner:
    """Listen on `config.host:config.port`; the caller cleans the returned runner up.

    Uploads left in `upload_dir` by an earlier run are removed. Raises `ConfigError` when the
    port cannot be bound.
    """
    await asyncio.to_thread(shutil.rmtree, upload_dir, True)
    server = ValidationServer(store, upload_dir, config.max_upload_mb)
    return await loopback.serve(server.build_app(), config.host, config.port,
                                shutdown_timeout, what="the validation server",
                                key="validation_server.port (--validate-port)")
