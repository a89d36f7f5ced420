"""Turn a dataset reference into ImageData: ``digits``, ``npz:DIR``, ``folder:DIR`` or an archive.

Everything here treats the files as hostile: npz arrays are read with ``allow_pickle=False``
and their headers are checked before any array is allocated, images are size-checked before
PIL decodes them, symlinks are refused, and archives go through our own safe extractor.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from autoprune.data.archive import ArchiveLimits, archive_kind, extract_archive
from autoprune.data.dataset import ImageData
from autoprune.data.lazy import IMAGE_ERRORS, ExtractedDir, LazyImages, files_of
from autoprune.data.preprocess import (
    DEFAULT_PREPROCESS,
    FOLDER_SIDE,
    Preprocess,
    resize_tensor,
    small_image_error,
    statistics,
    too_small,
)
from autoprune.errors import DataError, UnknownNameError, UnsafeInputError

ACCEPTED_FORMS = (
    "'digits', 'npz:DIR', 'folder:DIR', or a .zip/.tar/.tar.gz/.tgz archive (bare or as 'npz:ARCHIVE'/'folder:ARCHIVE')"
)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
NPY_HEADER_ALLOWANCE = 1 << 16  # an .npy member's header and padding, beyond its array's bytes
RATIO_FREE_BYTES = 1 << 20  # members this small are not ratio-checked (tiny label arrays compress well)


@dataclass(frozen=True, kw_only=True)
class DataLimits:
    """Caps on what a dataset may cost to load (the size images are brought to is the model's: ``Preprocess``)."""

    max_images: int = 2_000_000
    max_pixels_per_image: int = 4096 * 4096
    max_classes: int = 100_000
    max_array_bytes: int = 4 << 30  #: an npz dataset's images (train and test together), once decompressed
    archive: ArchiveLimits = field(default_factory=ArchiveLimits)


def load_data(
    ref: str,
    *,
    limits: DataLimits = DataLimits(),
    work_dir: str | Path | None = None,
    preprocess: Preprocess = DEFAULT_PREPROCESS,
) -> ImageData:
    """Load the dataset ``ref`` names (see ACCEPTED_FORMS), its images brought to the model's
    input and normalised as ``preprocess`` says; the data records the resolved ``preprocess``.

    Archives are extracted into a fresh directory under ``work_dir`` (kept there), or into a
    temporary directory removed when no dataset reads from it any more (an npz at once, being
    in memory; a folder's files when its images are no longer referenced, or at exit).
    """
    data = _load(ref, limits, work_dir, preprocess)
    channels, height, width = data.input_shape
    resolved = statistics(replace(preprocess, size=(height, width)), data.mean, data.std)
    assert resolved.mean is not None and resolved.std is not None
    return replace(data, mean=resolved.mean, std=resolved.std, preprocess=resolved)


def _load(ref: str, limits: DataLimits, work_dir: str | Path | None, pre: Preprocess) -> ImageData:
    if ref == "digits":
        return load_digits(pre)
    kind, sep, rest = ref.partition(":")
    if not sep or kind not in ("npz", "folder"):
        kind, rest = "", ref
    path = Path(rest).expanduser()
    if rest and archive_kind(path) is not None:
        return _load_archive(path, kind or None, limits, work_dir, pre)
    if rest and kind == "npz":
        return load_npz_dir(path, limits, pre=pre)
    if rest and kind == "folder":
        return load_folder(path, limits, pre=pre)
    raise UnknownNameError(f"unknown dataset {ref!r}; use {ACCEPTED_FORMS}")


def load_digits(pre: Preprocess = DEFAULT_PREPROCESS) -> ImageData:
    """scikit-learn's 8×8 digits (ships offline) as RGB images drawn at the input size (32 px by
    default), split 80/20 stratified."""
    # sklearn is slow to import and only this dataset needs it.
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    bunch = sklearn_digits()
    grey = torch.from_numpy(bunch.images).to(torch.float32).mul(255.0 / 16.0).unsqueeze(1)
    big = F.interpolate(grey, size=pre.size or (FOLDER_SIDE, FOLDER_SIDE), mode="bilinear", align_corners=False)
    x = big.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1)
    y = torch.from_numpy(bunch.target).to(torch.int64)
    train_idx, test_idx = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=bunch.target)
    train_idx, test_idx = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return ImageData.build(
        name="digits",
        train_x=x[train_idx],
        train_y=y[train_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        num_classes=10,
    )


# --- npz -------------------------------------------------------------------------------------


def load_npz_dir(
    directory: Path, limits: DataLimits = DataLimits(), name: str | None = None, *, pre: Preprocess = DEFAULT_PREPROCESS
) -> ImageData:
    """A directory with one ``*train*.npz`` and one ``*test*.npz``, each holding ``x`` (uint8) and ``y``;
    the images stay at their own size unless ``pre`` sets one."""
    if not directory.is_dir():
        raise DataError(f"npz dataset directory {directory} does not exist or is not a directory")
    train_path, test_path = _find_npz(directory, "train"), _find_npz(directory, "test")
    train_x, train_y = _read_npz(train_path, limits, limits.max_array_bytes)
    test_x, test_y = _read_npz(test_path, limits, limits.max_array_bytes - train_x.nbytes)
    _check_count(len(train_x) + len(test_x), limits, str(directory))
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(
            f"{train_path.name} holds {train_x.shape[1:]} (C,H,W) images but {test_path.name} holds {test_x.shape[1:]}"
        )
    if pre.size is not None:
        _check_decoded(len(train_x) + len(test_x), train_x.shape[1], pre.size, limits, str(directory))
    return ImageData.build(
        name=name or directory.name,
        train_x=resize_tensor(torch.from_numpy(train_x), pre, f"{train_path.name}'s images"),
        train_y=torch.from_numpy(train_y),
        test_x=resize_tensor(torch.from_numpy(test_x), pre, f"{test_path.name}'s images"),
        test_y=torch.from_numpy(test_y),
    )


def _find_npz(directory: Path, split: str) -> Path:
    found = sorted(p for p in directory.iterdir() if p.suffix == ".npz" and split in p.name and p.is_file())
    if len(found) != 1:
        names = ", ".join(p.name for p in found) or "none"
        raise DataError(f"{directory} must hold exactly one .npz file with {split!r} in its name; found {names}")
    return found[0]


def _read_npz(path: Path, limits: DataLimits, max_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(x as NCHW uint8, y as int64), checked from the .npy headers and the zip directory before
    the arrays are read: at most ``max_bytes`` of images, members no bigger than their headers say
    and not compressed past the archive ratio (an .npz is a zip the outer archive's checks never see)."""
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"could not read {path}: {exc}") from exc
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"{path} is a single .npy array, not an .npz archive with 'x' and 'y'")
    with npz:
        missing = sorted({"x", "y"} - set(npz.files))
        if missing:
            raise DataError(f"{path} lacks key(s) {missing}; it has {npz.files}")
        layout, x_shape, y_shape = _check_headers(npz, path, limits)
        _check_sizes(npz, path, limits, x_shape, y_shape, max_bytes)
        try:
            x, y = npz["x"], npz["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DataError(f"could not read the arrays in {path}: {exc}") from exc
    if x.shape != x_shape or y.shape != y_shape:
        raise DataError(f"{path}: arrays do not match their headers")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{path}: labels must be >= 0, found {int(y.min())}")
    if len(y) and int(y.max()) >= limits.max_classes:
        raise DataError(f"{path}: label {int(y.max())} is not below max_classes={limits.max_classes}")
    return _to_nchw(x, layout), y.astype(np.int64)


def _check_headers(
    npz: np.lib.npyio.NpzFile, path: Path, limits: DataLimits
) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """(x layout, x shape, y shape) from the .npy headers alone.

    Object arrays are refused without being unpickled, and huge arrays before they are allocated.
    """
    x_shape, x_dtype = _npy_header(npz, "x", path)
    y_shape, y_dtype = _npy_header(npz, "y", path)
    if x_dtype != np.uint8:
        raise DataError(f"{path}: 'x' has dtype {x_dtype}, expected uint8 images (0-255)")
    if y_dtype.kind not in "iu":
        raise DataError(f"{path}: 'y' has dtype {y_dtype}, expected integer class labels")
    if len(x_shape) not in (3, 4):
        raise DataError(f"{path}: 'x' has shape {x_shape}; expected N,H,W or N,H,W,C or N,C,H,W")
    if len(y_shape) != 1 or y_shape[0] != x_shape[0]:
        raise DataError(f"{path}: 'y' has shape {y_shape} but 'x' holds {x_shape[0]} images")
    if x_shape[0] == 0:
        raise DataError(f"{path} holds no images")
    layout, _, h, w = _layout(x_shape, path)
    _check_count(x_shape[0], limits, str(path))
    if h * w > limits.max_pixels_per_image:
        raise UnsafeInputError(
            f"{path}: images are {h}x{w}, more than max_pixels_per_image={limits.max_pixels_per_image}"
        )
    return layout, x_shape, y_shape


def _check_sizes(
    npz: np.lib.npyio.NpzFile,
    path: Path,
    limits: DataLimits,
    x_shape: tuple[int, ...],
    y_shape: tuple[int, ...],
    max_bytes: int,
) -> None:
    """Refuse, before decompressing anything, arrays over ``max_bytes`` and members whose
    decompressed size is out of line with their headers or their compressed size."""
    x_bytes = int(np.prod(x_shape, dtype=np.int64))
    if x_bytes > max_bytes:
        raise UnsafeInputError(
            f"{path.name}: 'x' holds {x_bytes:,} bytes of images ({'x'.join(map(str, x_shape))}), over the "
            f"limit of {limits.max_array_bytes:,} bytes for a dataset"
        )
    declared = {"x": x_bytes, "y": int(np.prod(y_shape, dtype=np.int64)) * 8}
    for key, most in declared.items():
        member = key + ".npy" if key + ".npy" in npz.zip.namelist() else key
        info = npz.zip.getinfo(member)
        if info.file_size > most + NPY_HEADER_ALLOWANCE:
            raise UnsafeInputError(
                f"{path.name}: {key!r} unpacks to {info.file_size:,} bytes, more than its header says"
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_FREE_BYTES and ratio > limits.archive.max_ratio:
            raise UnsafeInputError(
                f"{path.name}: {key!r} is compressed {ratio:.0f}:1, more than the limit of {limits.archive.max_ratio:g}:1"
            )


def _npy_header(npz: np.lib.npyio.NpzFile, key: str, path: Path) -> tuple[tuple[int, ...], np.dtype]:
    member = key + ".npy" if key + ".npy" in npz.zip.namelist() else key
    try:
        with npz.zip.open(member) as fp:
            version = np.lib.format.read_magic(fp)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            else:
                raise DataError(f"{path}: {key!r} uses .npy format version {version}, which is not supported")
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: {key!r} is not a readable .npy array: {exc}") from exc
    return shape, dtype


def _layout(shape: tuple[int, ...], path: Path) -> tuple[str, int, int, int]:
    """('NHW' | 'NHWC' | 'NCHW', C, H, W); channels-last wins when both ends look like channels."""
    if len(shape) == 3:
        return "NHW", 1, shape[1], shape[2]
    _, d1, d2, d3 = shape
    if d3 in (1, 3):
        return "NHWC", d3, d1, d2
    if d1 in (1, 3):
        return "NCHW", d1, d2, d3
    raise DataError(f"{path}: 'x' has shape {shape}; cannot find a channel axis of size 1 or 3")


def _to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHW":
        return np.ascontiguousarray(x[:, None])
    if layout == "NHWC":
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return np.ascontiguousarray(x)


def _check_count(count: int, limits: DataLimits, where: str) -> None:
    if count > limits.max_images:
        raise UnsafeInputError(f"{where} holds {count} images, more than max_images={limits.max_images}")


def _check_decoded(count: int, channels: int, size: tuple[int, int], limits: DataLimits, where: str) -> None:
    """Refuse a dataset whose images, at the model's input size, would not fit the in-memory cap."""
    total = count * channels * size[0] * size[1]
    if total > limits.max_array_bytes:
        raise UnsafeInputError(
            f"{where}: {count} images at {size[0]}x{size[1]} need {total:,} bytes in memory, over the limit of "
            f"{limits.max_array_bytes:,}; use a smaller --input-size or fewer images"
        )


# --- image folders ---------------------------------------------------------------------------


def load_folder(
    directory: Path, limits: DataLimits = DataLimits(), name: str | None = None, *, pre: Preprocess = DEFAULT_PREPROCESS
) -> ImageData:
    """ImageFolder layout ``DIR/train/<class>/*`` and ``DIR/test/<class>/*`` (or ``val``), at the input size."""
    if not directory.is_dir():
        raise DataError(f"image folder {directory} does not exist or is not a directory")
    train_dir = _split_dir(directory, ("train",))
    test_dir = _split_dir(directory, ("test", "val"))
    classes = _class_dirs(train_dir)
    test_classes = _class_dirs(test_dir)
    unknown = sorted(set(test_classes) - set(classes))
    if unknown:
        raise DataError(f"{test_dir} has class folder(s) {unknown} that {train_dir} lacks")
    index = {cls: i for i, cls in enumerate(classes)}
    train_files = [(f, index[c]) for c, d in classes.items() for f in _image_files(d)]
    test_files = [(f, index[c]) for c, d in test_classes.items() for f in _image_files(d)]
    _check_count(len(train_files) + len(test_files), limits, str(directory))
    pre = replace(pre, size=pre.size or (FOLDER_SIDE, FOLDER_SIDE))
    train_x, train_y = _lazy_images(train_files, limits, pre)
    test_x, test_y = _lazy_images(test_files, limits, pre)
    return ImageData.build(
        name=name or directory.name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(classes),
        stats=pre.normalize == "dataset",  # other statistics need no pass over the files
    )


def _split_dir(directory: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        path = directory / name
        if path.is_symlink():
            raise UnsafeInputError(f"{path} is a symlink; symlinks are not followed")
        if path.is_dir():
            return path
    raise DataError(f"image folder {directory} has no {' or '.join(n + '/' for n in names)} directory")


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    """Sorted class name → directory; loose files beside the class folders are ignored."""
    classes = {}
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.is_symlink():
            raise UnsafeInputError(f"{entry.path} is a symlink; symlinks are not followed")
        if entry.is_dir(follow_symlinks=False):
            classes[entry.name] = Path(entry.path)
    if not classes:
        raise DataError(f"{split_dir} holds no class folders")
    return classes


def _image_files(class_dir: Path) -> list[Path]:
    files = []
    for entry in sorted(os.scandir(class_dir), key=lambda e: e.name):
        if entry.is_symlink():
            raise UnsafeInputError(f"{entry.path} is a symlink; symlinks are not followed")
        if entry.is_file(follow_symlinks=False) and Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            files.append(Path(entry.path))
    if not files:
        raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def _lazy_images(files: list[tuple[Path, int]], limits: DataLimits, pre: Preprocess) -> tuple[LazyImages, torch.Tensor]:
    """The split's images, left on disk once every header has passed (decoded per batch, where
    a file that does not decode is a DataError naming it)."""
    for path, _ in files:
        _check_header(path, limits, pre)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    return LazyImages(files_of([path for path, _ in files]), pre), y


def _check_header(path: Path, limits: DataLimits, pre: Preprocess) -> None:
    """Read the header only: refuse an image that would unpack into gigabytes, or one smaller than
    the model's crop (named, rather than silently upsampled), before anything is decoded."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if width * height > limits.max_pixels_per_image:
                raise UnsafeInputError(
                    f"image {path} is {width}x{height} pixels, more than "
                    f"max_pixels_per_image={limits.max_pixels_per_image}"
                )
            if too_small(width, height, pre):
                raise small_image_error(f"image {path}", width, height, pre)
    except Image.DecompressionBombError as exc:
        raise UnsafeInputError(f"image {path} was refused as a decompression bomb: {exc}") from exc
    except IMAGE_ERRORS as exc:
        raise DataError(f"could not read image {path}: {exc}") from exc


# --- archives --------------------------------------------------------------------------------


def _load_archive(
    archive: Path, kind: str | None, limits: DataLimits, work_dir: str | Path | None, pre: Preprocess
) -> ImageData:
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        return _load_extracted(archive, kind, limits, Path(tempfile.mkdtemp(prefix="data-", dir=work_dir)), pre)
    tmp = ExtractedDir(Path(tempfile.mkdtemp(prefix="autoprune-data-")))  # removed once nothing reads it
    data = _load_extracted(archive, kind, limits, tmp.path, pre)
    if isinstance(data.train_x, LazyImages) and isinstance(data.test_x, LazyImages):
        return replace(data, train_x=data.train_x.kept_by(tmp), test_x=data.test_x.kept_by(tmp))
    return data  # in memory: ``tmp`` goes now


def _load_extracted(archive: Path, kind: str | None, limits: DataLimits, dest: Path, pre: Preprocess) -> ImageData:
    root, kind = _find_root(extract_archive(archive, dest, limits.archive), kind, archive)
    name = _archive_stem(archive)
    if kind == "npz":
        return load_npz_dir(root, limits, name, pre=pre)
    return load_folder(root, limits, name, pre=pre)


def _archive_stem(archive: Path) -> str:
    """'cifar10' for 'cifar10.tar.gz', the dataset's name."""
    for suffix in (".tar.gz", ".tgz", ".tar", ".zip"):
        if archive.name.lower().endswith(suffix):
            return archive.name[: -len(suffix)]
    return archive.name


def _find_root(top: Path, kind: str | None, archive: Path) -> tuple[Path, str]:
    """The dataset may sit at the archive's top or inside its single top-level directory."""
    entries = list(top.iterdir())
    candidates = [top] + ([entries[0]] if len(entries) == 1 and entries[0].is_dir() else [])
    kinds = [kind] if kind else ["folder", "npz"]
    for root in candidates:
        for k in kinds:
            if _has_layout(root, k):
                return root, k
    wanted = {"folder": "train/ and test/ folders", "npz": "train and test .npz files"}
    raise DataError(f"archive {archive} holds no {' or '.join(wanted[k] for k in kinds)} at its top or one folder down")


def _has_layout(root: Path, kind: str) -> bool:
    if kind == "folder":
        return (root / "train").is_dir()
    return any(p.suffix == ".npz" and "train" in p.name for p in root.iterdir())
