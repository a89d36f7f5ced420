"""The archive extractor's refusals: traversal, links, bombs, member and size limits (real files)."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from autoprune.data import ArchiveLimits, extract_archive, load_data
from autoprune.errors import DataError, UnsafeInputError


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w") -> Path:
    with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def _tar_member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for info, data in members:
            zf.writestr(info, data, compress_type=compression)
    return path


def _zip_symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    info.create_system = 3  # unix
    return info


def _pax_member(name: str, header_bytes: int) -> tarfile.TarInfo:
    """A member whose pax header alone is ``header_bytes`` long; tarfile reads it into memory whole."""
    info = _tar_member(name)
    info.pax_headers = {"comment": "a" * header_bytes}
    return info


GOOD = [("ok/a.txt", b"fine"), ("ok/b.txt", b"also fine")]


def _attacks(tmp: Path) -> dict[str, tuple[Path, ArchiveLimits, str]]:
    """name → (archive, limits, expected message) for every refusal we promise."""
    outside = tmp / "outside" / "abs-evil"
    zeros = bytes(50 << 20)
    bomb_zip = _zip(tmp / "bomb.zip", [*GOOD, ("zeros.bin", zeros)], zipfile.ZIP_DEFLATED)
    with tarfile.open(tmp / "bomb.tar.gz", "w:gz", compresslevel=1) as tf:
        for name, data in [*GOOD, ("zeros.bin", zeros)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    good_tar = [(_tar_member(n), d) for n, d in GOOD]
    default = ArchiveLimits()
    return {
        "zip-traversal": (_zip(tmp / "t.zip", [*GOOD, ("../evil", b"x")]), default, "'../evil' climbs out"),
        "zip-absolute": (_zip(tmp / "a.zip", [*GOOD, (str(outside), b"x")]), default, "absolute path"),
        "zip-backslash": (_zip(tmp / "b.zip", [*GOOD, ("..\\evil", b"x")]), default, "backslash"),
        "zip-symlink": (
            _zip(tmp / "s.zip", [*GOOD, (_zip_symlink("link", "/etc/passwd"), b"/etc/passwd")]),
            default,
            "'link' is a symlink",
        ),
        "zip-bomb-member": (
            bomb_zip,
            ArchiveLimits(max_member_bytes=1 << 20, max_ratio=1e9),
            "'zeros.bin'.*max_member_bytes",
        ),
        "zip-bomb-total": (bomb_zip, ArchiveLimits(max_total_bytes=10 << 20, max_ratio=1e9), "max_total_bytes"),
        "zip-bomb-ratio": (bomb_zip, default, "max_ratio=200"),
        "zip-too-many": (
            _zip(tmp / "m.zip", [(f"f{i}", b"x") for i in range(10)]),
            ArchiveLimits(max_members=5),
            "max_members=5",
        ),
        "tar-traversal": (
            _tar(tmp / "t.tar", [*good_tar, (_tar_member("ok/../../evil"), b"x")]),
            default,
            "climbs out",
        ),
        "tar-absolute": (_tar(tmp / "a.tar", [*good_tar, (_tar_member(str(outside)), b"x")]), default, "absolute"),
        "tar-symlink": (
            _tar(tmp / "s.tar", [*good_tar, (_tar_member("link", tarfile.SYMTYPE, "/etc"), b"")]),
            default,
            "'link' is a symlink",
        ),
        "tar-symlink-then-write": (
            _tar(
                tmp / "sw.tar",
                [(_tar_member("d", tarfile.SYMTYPE, str(tmp / "outside")), b""), (_tar_member("d/evil"), b"x")],
            ),
            default,
            "'d' is a symlink",
        ),
        "tar-hardlink": (
            _tar(tmp / "h.tar", [*good_tar, (_tar_member("hard", tarfile.LNKTYPE, "../outside/x"), b"")]),
            default,
            "'hard' is a hard link",
        ),
        "tar-fifo": (_tar(tmp / "f.tar", [*good_tar, (_tar_member("pipe", tarfile.FIFOTYPE), b"")]), default, "FIFO"),
        "tar-device": (
            _tar(tmp / "c.tar", [*good_tar, (_tar_member("dev", tarfile.CHRTYPE), b"")]),
            default,
            "character device",
        ),
        "tar-duplicate": (_tar(tmp / "d.tar", [*good_tar, (_tar_member("ok/a.txt"), b"again")]), default, "duplicated"),
        "tar-too-many": (
            _tar(tmp / "m.tar", [(_tar_member(f"f{i}"), b"x") for i in range(10)]),
            ArchiveLimits(max_members=5),
            "max_members=5",
        ),
        "tar-member-bytes": (
            _tar(tmp / "big.tar", [*good_tar, (_tar_member("big"), bytes(3000))]),
            ArchiveLimits(max_member_bytes=2048),
            "'big'.*max_member_bytes",
        ),
        "tar-pax-header-bomb": (
            _tar(tmp / "pax.tar", [(_pax_member("a.txt", 3 << 20), b"x")]),
            ArchiveLimits(max_total_bytes=1 << 20, max_members=10),
            "bytes of tar stream",
        ),
        "tgz-bomb-ratio": (tmp / "bomb.tar.gz", default, "max_ratio=200"),
        "tgz-bomb-total": (
            tmp / "bomb.tar.gz",
            ArchiveLimits(max_total_bytes=4 << 20, max_ratio=1e9),
            "max_total_bytes",
        ),
    }


@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[Path, ArchiveLimits, str]]]:
    tmp = tmp_path_factory.mktemp("attacks")
    (tmp / "outside").mkdir()
    return tmp, _attacks(tmp)


ATTACK_NAMES = [
    "zip-traversal",
    "zip-absolute",
    "zip-backslash",
    "zip-symlink",
    "zip-bomb-member",
    "zip-bomb-total",
    "zip-bomb-ratio",
    "zip-too-many",
    "tar-traversal",
    "tar-absolute",
    "tar-symlink",
    "tar-symlink-then-write",
    "tar-hardlink",
    "tar-fifo",
    "tar-device",
    "tar-duplicate",
    "tar-too-many",
    "tar-member-bytes",
    "tar-pax-header-bomb",
    "tgz-bomb-ratio",
    "tgz-bomb-total",
]


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("name", ATTACK_NAMES)
def test_archive_attacks_are_refused_and_leave_nothing(
    attacks: tuple[Path, dict[str, tuple[Path, ArchiveLimits, str]]], name: str
) -> None:
    tmp, table = attacks
    archive, limits, message = table[name]
    dest = tmp / f"dest-{name}"
    before = _snapshot(tmp)
    with pytest.raises(UnsafeInputError, match=message):
        extract_archive(archive, dest, limits)
    assert _snapshot(tmp) - before <= {dest.name}, "something was written outside dest"
    assert not dest.exists() or not any(dest.iterdir()), "partial files left in dest"
    assert not (tmp / "evil").exists() and not (tmp / "outside" / "abs-evil").exists()


def test_attack_table_matches_parametrisation(attacks: tuple[Path, dict]) -> None:
    assert sorted(attacks[1]) == sorted(ATTACK_NAMES)


def test_good_archives_extract(tmp_path: Path) -> None:
    z = _zip(tmp_path / "good.zip", [("./", b""), *GOOD], zipfile.ZIP_DEFLATED)
    assert sorted(p.name for p in extract_archive(z, tmp_path / "z").rglob("*")) == ["a.txt", "b.txt", "ok"]
    t = _tar(
        tmp_path / "good.tar.gz",
        [(_tar_member("ok", tarfile.DIRTYPE), b""), *[(_tar_member(n), d) for n, d in GOOD]],
        mode="w:gz",
    )
    out = extract_archive(t, tmp_path / "t")
    assert (out / "ok" / "b.txt").read_bytes() == b"also fine"
    with pytest.raises(DataError, match="must be an empty directory"):
        extract_archive(t, tmp_path / "t")


def test_unknown_and_corrupt_archives_are_data_errors(tmp_path: Path) -> None:
    rar = tmp_path / "data.rar"
    rar.write_bytes(b"Rar!")
    with pytest.raises(DataError, match=r"data\.rar is not a \.zip"):
        extract_archive(rar, tmp_path / "out")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match=r"broken\.zip"):
        extract_archive(broken, tmp_path / "out")
    gz = tmp_path / "broken.tgz"
    gz.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match=r"broken\.tgz"):
        extract_archive(gz, tmp_path / "out2")
    assert not any((tmp_path / "out2").iterdir())


def test_dataset_archive_attack_through_load_data(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "evil.zip", [("train/a/x.png", b""), ("../escape.png", b"x")])
    work = tmp_path / "work"
    with pytest.raises(UnsafeInputError, match="escape"):
        load_data(str(archive), work_dir=work)
    assert not (tmp_path / "escape.png").exists() and not (work / "escape.png").exists()
    assert not [p for p in work.rglob("*") if p.is_file()]
