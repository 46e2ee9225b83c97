"""Upload limits enforced while the request streams in, with one message per refused file.

Django's own limits (DATA_UPLOAD_MAX_NUMBER_FILES, the 1 KiB cap on a part's headers) fail the
whole request with a bare 400 and keep nothing. Here a file over a limit is skipped alone, the
others are kept, and the view lists what was refused and why.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from django.conf import settings
from django.core.files.uploadhandler import SkipFile, TemporaryFileUploadHandler
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParser

MAX_NAME_CHARS = 255
# Django refuses a part whose headers pass 1 KiB; a shortened name leaves room for the rest.
MAX_NAME_BYTES = 512
# Beyond this many refused files, one summary line stands for the rest.
MAX_LISTED_REJECTIONS = 1000
_SCAN_LIMIT = 64 * 1024  # a part's headers longer than this are left to Django to refuse


@dataclass(frozen=True)
class Rejection:
    name: str
    message: str


def human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    exponent = min(3, int(math.log(n, 1024)))
    return f"{n / 1024**exponent:.4g} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


class LimitedUploadHandler(TemporaryFileUploadHandler):
    """Streams each file to a temporary file, counting the bytes that actually arrive.

    The per-file limit (MEDANNOT_MAX_FILE_BYTES), the number of files (MEDANNOT_MAX_UPLOAD_FILES)
    and the total size (MEDANNOT_MAX_UPLOAD_BYTES) are checked before each chunk is written:
    a size claimed by the client is never trusted, and nothing over a limit reaches the disk.
    """

    def __init__(self, request=None):
        super().__init__(request)
        self.max_file_bytes: int = settings.MEDANNOT_MAX_FILE_BYTES
        self.max_files: int = settings.MEDANNOT_MAX_UPLOAD_FILES
        self.max_total_bytes: int = settings.MEDANNOT_MAX_UPLOAD_BYTES
        self.rejections: list[Rejection] = []
        self.unlisted = 0  # refused files beyond MAX_LISTED_REJECTIONS
        self.n_files = 0
        self.file_bytes = 0
        self.total_bytes = 0
        self.total_reached = False  # once a file did not fit, later ones are refused too
        self._parsing = False

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # Parse the same body through a filter that shortens over-long file names, so that
        # one such name is not a 400 for the whole upload. Our own nested call returns None.
        if self._parsing or self.request is None:
            return None
        self._parsing = True
        try:
            body = _ShortNames(input_data, boundary)
            return MultiPartParser(META, body, self.request.upload_handlers, encoding).parse()
        finally:
            self._parsing = False

    def new_file(self, field_name, file_name, *args, **kwargs):
        self.n_files += 1
        self.file_bytes = 0
        self.__dict__.pop("file", None)  # Django closes `file` on SkipFile: not the last kept one
        if self.n_files > self.max_files:
            self._skip(
                file_name,
                f"not uploaded: at most {self.max_files} files per upload; "
                "upload the rest separately",
            )
        if self.total_reached:
            self._skip(file_name, self._total_message())
        super().new_file(field_name, file_name, *args, **kwargs)

    def receive_data_chunk(self, raw_data, start):
        size = len(raw_data)
        if self.file_bytes + size > self.max_file_bytes:
            self._discard()
            self._skip(
                self.file_name, f"file too large: the limit is {human_bytes(self.max_file_bytes)}"
            )
        if self.total_bytes + size > self.max_total_bytes:
            self.total_reached = True
            self._discard()
            self._skip(self.file_name, self._total_message())
        self.file_bytes += size
        self.total_bytes += size
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        file = super().file_complete(file_size)
        del self.file  # handed over to request.FILES
        return file

    def _total_message(self) -> str:
        return (
            f"not uploaded: at most {human_bytes(self.max_total_bytes)} per upload in total "
            "size; upload the rest separately"
        )

    def _discard(self) -> None:
        file = self.__dict__.pop("file", None)
        if file is not None:
            path = file.temporary_file_path()
            file.close()  # a NamedTemporaryFile: closing deletes it
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        # What was written of this file no longer counts towards the total.
        self.total_bytes -= self.file_bytes
        self.file_bytes = 0

    def _skip(self, name: str | None, message: str):
        if len(self.rejections) < MAX_LISTED_REJECTIONS:
            self.rejections.append(Rejection(name or "unnamed", message))
        else:
            self.unlisted += 1
        raise SkipFile(message)


def upload_rejections(request: HttpRequest) -> list[Rejection]:
    """The files of this request that the upload handler refused, in the order they came."""
    found: list[Rejection] = []
    for handler in request.upload_handlers:
        if isinstance(handler, LimitedUploadHandler):
            found += handler.rejections
            if handler.unlisted:
                found.append(
                    Rejection(
                        f"{handler.unlisted} more files", "not uploaded: too many files refused"
                    )
                )
    return found


_FILENAME = re.compile(rb'(;\s*filename=)"((?:[^"\\\r\n]|\\.)*)"', re.IGNORECASE)


def short_name(name: str) -> str:
    """`name` cut to 255 characters and 512 UTF-8 bytes, keeping its suffix (`.svs`)."""
    stem, suffix = os.path.splitext(name)
    suffix = suffix[:16]
    stem = stem[: MAX_NAME_CHARS - len(suffix)]
    while stem and len((stem + suffix).encode()) > MAX_NAME_BYTES:
        stem = stem[: -max(1, len(stem) // 8)]
    return (stem + suffix)[:MAX_NAME_CHARS]


def _shorten_header(block: bytes) -> bytes:
    def replace(m: re.Match) -> bytes:
        raw = m.group(2)
        if len(raw) <= MAX_NAME_BYTES:
            return m.group(0)
        try:
            name = raw.decode().replace("\\\\", "\\").replace('\\"', '"')
        except UnicodeDecodeError:
            return m.group(0)
        # Django keeps only the last path component; so do we, before cutting.
        name = name.rsplit("/")[-1].rsplit("\\")[-1]
        quoted = short_name(name).replace('"', "%22")  # as browsers write a quote
        return m.group(1) + b'"' + quoted.encode() + b'"'

    return _FILENAME.sub(replace, block)


class _ShortNames:
    """A multipart body, read through: over-long `filename="..."` values in part headers are
    shortened; everything else passes unchanged."""

    def __init__(self, stream, boundary: bytes):
        self._stream = stream
        self._first = b"--" + boundary
        self._delimiter = b"\r\n--" + boundary
        self._buf = b""
        self._out = bytearray()
        self._in_headers = False
        self._started = False
        self._eof = False

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._out) < size):
            chunk = self._stream.read(64 * 1024)
            if not chunk:
                self._eof = True
            self._buf += chunk
            self._scan()
        if size < 0 or size >= len(self._out):
            data, self._out = bytes(self._out), bytearray()
        else:
            data = bytes(self._out[:size])
            del self._out[:size]
        return data

    def _scan(self) -> None:
        while True:
            if not self._started:
                if len(self._buf) < len(self._first) and not self._eof:
                    return
                self._started = True
                if self._buf.startswith(self._first):
                    self._emit(len(self._first))
                    self._in_headers = True
            if self._in_headers:
                end = self._buf.find(b"\r\n\r\n")
                if end == -1:
                    if self._eof or len(self._buf) > _SCAN_LIMIT:
                        self._in_headers = False  # not ours to judge: pass it on
                        continue
                    return
                self._out += _shorten_header(self._buf[: end + 4])
                self._buf = self._buf[end + 4 :]
                self._in_headers = False
            at = self._buf.find(self._delimiter)
            if at == -1:
                # Keep a tail that could be the start of a delimiter split across chunks.
                keep = 0 if self._eof else len(self._delimiter) - 1
                self._emit(max(0, len(self._buf) - keep))
                return
            self._emit(at + len(self._delimiter))
            self._in_headers = True

    def _emit(self, n: int) -> None:
        self._out += self._buf[:n]
        self._buf = self._buf[n:]
