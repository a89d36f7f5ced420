"""Stream a multipart/form-data body to disk with hard limits, hashing files as they arrive.

Starlette's form parser caps only non-file parts and spools files without bound, so POST /jobs
parses the body itself with python-multipart: the total body is counted chunk by chunk (413 as
soon as it passes ``max_upload_bytes``, whatever Content-Length said), text fields are capped
at ``max_field_bytes``, only the expected field names are accepted, each at most once, and file
parts go straight to ``*.partial`` files that are deleted on any failure. A full disk is the
server's condition, not a malformed body: 507 ``storage_full``, retryable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from api.errors import DISK_FULL, ApiError, storage_full
from api.jobspec import FILE_FIELDS, text_fields

FAILPOINT_ENV = "AUTOPRUNE_FAILPOINT"  # tests: "upload_enospc:NAME" fails writing a file part named NAME


@dataclass
class UploadedFile:
    """A file part on disk; ``path`` ends in ``.partial`` until the service moves it."""

    field: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class Form:
    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def discard(self) -> None:
        for upload in self.files.values():
            upload.path.unlink(missing_ok=True)


class _Collector:
    """python-multipart callbacks that build a Form under the limits."""

    def __init__(self, staging: Path, max_field_bytes: int, max_fields: int) -> None:
        self.form = Form()
        self.staging = staging
        self.max_field_bytes = max_field_bytes
        self.max_fields = max_fields
        self.text_fields = text_fields()  # the job spec's form fields and the service's own
        self.parts = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""
        self._name = ""
        self._text = bytearray()
        self._file: IO[bytes] | None = None
        self._upload: UploadedFile | None = None
        self._hash = hashlib.sha256()

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_fields:
            raise ApiError(422, "too_many_fields", f"at most {self.max_fields} form parts are accepted")
        self._disposition, self._text, self._upload = b"", bytearray(), None

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]
        if len(self._header_value) > 4096:
            raise ApiError(400, "bad_multipart", "a part header is too long")

    def on_header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if name in self.form.fields or name in self.form.files:
            raise ApiError(422, "duplicate_field", f"form field {name!r} is given more than once")
        self._name = name
        if b"filename" in options:
            if name not in FILE_FIELDS:
                raise ApiError(422, "unexpected_file", f"{name!r} is not a file field; files go in {list(FILE_FIELDS)}")
            filename = os.path.basename(options[b"filename"].decode("utf-8", "replace"))[:200]
            path = self.staging / f"{uuid.uuid4().hex}.partial"
            self._upload = UploadedFile(field=name, filename=filename, path=path)
            self.form.files[name] = self._upload
            self._file = open(path, "xb")
            if os.environ.get(FAILPOINT_ENV) == f"upload_enospc:{filename}":  # tests: a full disk
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            self._hash = hashlib.sha256()
        elif name not in self.text_fields:
            accepted = sorted(self.text_fields | set(FILE_FIELDS))
            raise ApiError(422, "unknown_field", f"unknown form field {name!r}; accepted: {accepted}")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None and self._upload is not None:
            self._file.write(chunk)
            self._hash.update(chunk)
            self._upload.size += len(chunk)
            return
        self._text.extend(chunk)
        if len(self._text) > self.max_field_bytes:
            raise ApiError(413, "field_too_large", f"form field {self._name!r} is over {self.max_field_bytes} bytes")

    def on_part_end(self) -> None:
        if self._file is not None and self._upload is not None:
            self._file.close()  # fsynced later, in a thread, when the service adopts it
            self._file = None
            self._upload.sha256 = self._hash.hexdigest()
            return
        try:
            self.form.fields[self._name] = self._text.decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(422, "bad_encoding", f"form field {self._name!r} is not UTF-8") from None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


async def read_form(request: Request, staging: Path, *, max_bytes: int, max_field_bytes: int, max_fields: int) -> Form:
    """Parse the request body (see module doc); the caller owns the returned files."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        raise ApiError(415, "unsupported_media_type", "POST /jobs takes multipart/form-data")
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise ApiError(400, "bad_multipart", "the multipart boundary is missing or too long")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, "too_large", f"the upload is {declared} bytes, over the limit of {max_bytes}")
    staging.mkdir(parents=True, exist_ok=True)
    collector = _Collector(staging, max_field_bytes, max_fields)
    callbacks = {name: getattr(collector, name) for name in dir(collector) if name.startswith("on_")}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, "too_large", f"the upload is over the limit of {max_bytes} bytes")
            parser.write(chunk)
        parser.finalize()
        if collector._file is not None:
            raise ApiError(400, "bad_multipart", "the multipart body ended inside a part")
    except ApiError:
        collector.close()
        collector.form.discard()
        raise
    except OSError as exc:
        collector.close()
        collector.form.discard()
        if exc.errno in DISK_FULL:  # the server's disk, not the caller's body
            raise storage_full() from exc
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    except Exception as exc:  # python-multipart's parse errors, a client that hung up
        collector.close()
        collector.form.discard()
        raise ApiError(400, "bad_multipart", f"malformed multipart body: {exc}") from exc
    return collector.form
