"""Extract uploaded zip/tar archives with our own allow-list.

We never call ``extractall`` nor rely on tarfile's extraction filters (they have been bypassed
before): members are walked one by one, only regular files and directories are accepted, every
name is checked to stay inside ``dest``, and bytes are counted as they are streamed so a header
that lies about sizes cannot slip past the limits. On any failure everything written is removed.
"""

from __future__ import annotations

import gzip
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from autoprune.errors import DataError, UnsafeInputError

CHUNK_BYTES = 1 << 20
# Tar headers, pax records and padding that may precede each member's data; bounds what tarfile
# itself reads into memory (e.g. a huge pax header) on top of max_total_bytes.
TAR_OVERHEAD_PER_MEMBER = 4096
_DRIVE = re.compile(r"^[A-Za-z]:")
_TAR_KINDS = {
    tarfile.SYMTYPE: "a symlink",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True, kw_only=True)
class ArchiveLimits:
    """Caps that keep an archive from filling the disk (``max_ratio``: unpacked / archive bytes)."""

    max_members: int = 100_000
    max_total_bytes: int = 2 << 30
    max_member_bytes: int = 512 << 20
    max_ratio: float = 200.0


def archive_kind(path: str | Path) -> str | None:
    """'zip', 'tar' or 'tar.gz' from the file name, or None when it is not an archive we read."""
    name = Path(path).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    return None


def extract_archive(path: str | Path, dest: str | Path, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Unpack ``path`` into ``dest`` (missing or empty) and return ``dest`` resolved.

    Raises UnsafeInputError for a refused member or a broken limit, DataError for an unreadable
    or unknown archive; either way ``dest`` is left without any extracted file.
    """
    archive = Path(path)
    kind = archive_kind(archive)
    if kind is None:
        raise DataError(f"{archive} is not a .zip, .tar, .tar.gz or .tgz archive")
    if not archive.is_file():
        raise DataError(f"archive {archive} does not exist or is not a file")
    writer = _Writer(_prepare_dest(Path(dest)), limits, archive)
    try:
        if kind == "zip":
            _extract_zip(archive, writer)
        else:
            _extract_tar(archive, writer, compressed=kind == "tar.gz")
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, tarfile.TarError, NotImplementedError) as exc:
        writer.undo()
        raise DataError(f"could not unpack {archive}: {exc}") from exc
    except BaseException:
        writer.undo()
        raise
    return writer.dest


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of member ``name``; UnsafeInputError if it could land outside dest."""
    if "\\" in name or "\x00" in name or _DRIVE.match(name):
        raise UnsafeInputError(f"archive member {name!r} has a backslash, NUL or drive letter in its name")
    if name.startswith("/"):
        raise UnsafeInputError(f"archive member {name!r} has an absolute path")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise UnsafeInputError(f"archive member {name!r} climbs out of the destination with '..'")
    return parts


def _prepare_dest(dest: Path) -> Path:
    """Only a fresh or empty dest lets us promise that a failure leaves it empty."""
    if dest.is_symlink():
        raise UnsafeInputError(f"extraction destination {dest} is a symlink")
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DataError(f"extraction destination {dest} must be an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    return dest.resolve()


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _Writer:
    """Creates files and directories under dest, counts bytes against the limits, and can undo."""

    def __init__(self, dest: Path, limits: ArchiveLimits, archive: Path) -> None:
        self.dest = dest
        self.limits = limits
        self.archive = archive
        self.archive_bytes = max(archive.stat().st_size, 1)
        self.members = 0
        self.total = 0
        self.created: list[Path] = []

    def count_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            raise UnsafeInputError(
                f"{self.archive.name} has more than max_members={self.limits.max_members} members (refused at {name!r})"
            )

    def check_declared(self, sizes: list[tuple[str, int]]) -> None:
        """Refuse from the directory alone (zip) before a byte is written; streaming re-checks."""
        if len(sizes) > self.limits.max_members:
            raise UnsafeInputError(
                f"{self.archive.name} has {len(sizes)} members, more than max_members={self.limits.max_members}"
            )
        for name, size in sizes:
            self._check_member(name, size)
        self._check_total(sum(size for _, size in sizes), "its declared sizes")

    def target(self, name: str) -> Path | None:
        """Where member ``name`` goes, or None for the archive root itself (e.g. './')."""
        parts = safe_parts(name)
        if not parts:
            return None
        target = self.dest.joinpath(*parts)
        if not Path(os.path.realpath(target)).is_relative_to(self.dest):
            raise UnsafeInputError(f"archive member {name!r} resolves outside the destination")
        return target

    def make_dirs(self, path: Path, name: str) -> None:
        """Create each missing directory up to ``path``, refusing anything that is not a real directory."""
        current = self.dest
        for part in path.relative_to(self.dest).parts:
            current = current / part
            try:
                os.mkdir(current)
            except FileExistsError:
                if not stat.S_ISDIR(os.lstat(current).st_mode):
                    raise UnsafeInputError(f"archive member {name!r} needs {part!r} to be a directory") from None
                continue
            self.created.append(current)

    def write_file(self, name: str, target: Path, source: _Readable) -> None:
        """Stream ``source`` into a new file, checking the limits before each chunk is written."""
        self.make_dirs(target.parent, name)
        try:
            out = open(target, "xb")
        except FileExistsError:
            raise UnsafeInputError(f"archive member {name!r} is duplicated or collides with a directory") from None
        self.created.append(target)
        written = 0
        with out:
            while chunk := source.read(CHUNK_BYTES):
                written += len(chunk)
                self.total += len(chunk)
                self._check_member(name, written)
                self._check_total(self.total, f"member {name!r}")
                out.write(chunk)

    def undo(self) -> None:
        """Remove what was extracted, newest first so directories are empty when their turn comes."""
        for path in reversed(self.created):
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.rmdir(path)
            else:
                os.unlink(path)
        self.created.clear()

    def _check_member(self, name: str, size: int) -> None:
        if size > self.limits.max_member_bytes:
            raise UnsafeInputError(
                f"archive member {name!r} unpacks to more than max_member_bytes={self.limits.max_member_bytes}"
            )

    def _check_total(self, total: int, where: str) -> None:
        if total > self.limits.max_total_bytes:
            raise UnsafeInputError(
                f"{self.archive.name} unpacks to more than max_total_bytes={self.limits.max_total_bytes} (at {where})"
            )
        if total > self.limits.max_ratio * self.archive_bytes:
            raise UnsafeInputError(
                f"{self.archive.name} expands more than max_ratio={self.limits.max_ratio:g} times its "
                f"{self.archive_bytes} bytes (at {where}); refused as a decompression bomb"
            )


def _extract_zip(archive: Path, writer: _Writer) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        writer.check_declared([(info.filename, info.file_size) for info in infos])
        for info in infos:
            writer.count_member(info.filename)
            _check_zip_member(info)
            _extract_member(writer, info.filename, info.is_dir(), lambda info=info: zf.open(info))


def _extract_member(writer: _Writer, name: str, is_dir: bool, open_source: Callable[[], IO[bytes]]) -> None:
    """Create an allowed directory, or stream an allowed file's bytes through the writer's quotas."""
    target = writer.target(name)
    if target is None:
        return
    if is_dir:
        writer.make_dirs(target, name)
        return
    with open_source() as source:
        writer.write_file(name, target, source)


def _tar_stream(tf: tarfile.TarFile, member: tarfile.TarInfo) -> IO[bytes]:
    source = tf.extractfile(member)
    if source is None:
        raise DataError(f"tar member {member.name!r} has no data stream")
    return source


def _check_zip_member(info: zipfile.ZipInfo) -> None:
    """Unix mode bits live in the high 16 bits of external_attr; no file-type bits means a plain file
    (DOS-made zips, and Python's ``writestr`` which sets permissions only)."""
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeInputError(f"zip member {info.filename!r} is a symlink; only files and directories are allowed")
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeInputError(
            f"zip member {info.filename!r} is a special file (mode {oct(mode)}); only files and directories are allowed"
        )
    if info.flag_bits & 0x1:
        raise DataError(f"zip member {info.filename!r} is encrypted")


def _extract_tar(archive: Path, writer: _Writer, *, compressed: bool) -> None:
    """Stream mode ('r|') reads each header once, in order, and never seeks back."""
    cap = writer.limits.max_total_bytes + TAR_OVERHEAD_PER_MEMBER * (writer.limits.max_members + 1)
    with open(archive, "rb") as raw:
        stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
        with tarfile.open(fileobj=_CappedReader(stream, cap, archive), mode="r|") as tf:
            for member in tf:
                writer.count_member(member.name)
                _check_tar_member(member)
                _extract_member(writer, member.name, member.isdir(), lambda member=member: _tar_stream(tf, member))


def _check_tar_member(member: tarfile.TarInfo) -> None:
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
        return
    kind = _TAR_KINDS.get(member.type, f"of unknown type {member.type!r}")
    raise UnsafeInputError(f"tar member {member.name!r} is {kind}; only files and directories are allowed")


class _CappedReader:
    """Counts the decompressed tar stream so tarfile cannot be made to read unbounded headers."""

    def __init__(self, stream: IO[bytes], cap: int, archive: Path) -> None:
        self.stream = stream
        self.cap = cap
        self.archive = archive
        self.seen = 0

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.seen += len(data)
        if self.seen > self.cap:
            raise UnsafeInputError(f"{self.archive.name} decompresses to more than {self.cap} bytes of tar stream")
        return data
