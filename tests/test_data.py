"""Dataset intake: loaders, batching, and archives of datasets (all on real files)."""

from __future__ import annotations

import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autoprune.data import DataLimits, ImageData, iterate_batches, load_data
from autoprune.data.loader import normalize
from autoprune.data.preprocess import Preprocess
from autoprune.errors import DataError, UnknownNameError, UnsafeInputError
from autoprune.spec import SpecError

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_data("digits")


# --- digits and ImageData --------------------------------------------------------------------


def test_digits_shapes_dtypes_and_split(digits: ImageData) -> None:
    assert digits.name == "digits"
    assert digits.input_shape == (3, 32, 32)
    assert digits.train_x.dtype == torch.uint8 and digits.train_x.is_contiguous()
    assert digits.train_y.dtype == torch.int64 and digits.test_y.dtype == torch.int64
    assert (len(digits.train_y), len(digits.test_y)) == (1437, 360)
    assert digits.num_classes == 10
    assert set(digits.train_y.tolist()) == set(range(10)) == set(digits.test_y.tolist())
    assert int(digits.train_x.max()) == 255 and int(digits.train_x.min()) == 0
    assert torch.equal(digits.train_x[:, 0], digits.train_x[:, 2])  # grey repeated to RGB
    assert len(digits.mean) == len(digits.std) == 3
    # Deterministic split: a second load gives the very same tensors.
    again = load_data("digits")
    assert torch.equal(again.train_y, digits.train_y) and torch.equal(again.test_x, digits.test_x)


def test_subset_is_deterministic_and_keeps_stats(digits: ImageData) -> None:
    a = digits.subset(train=100, test=20, seed=3)
    b = digits.subset(train=100, test=20, seed=3)
    c = digits.subset(train=100, test=20, seed=4)
    assert (len(a.train_y), len(a.test_y)) == (100, 20)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.train_y, c.train_y)
    assert a.mean == digits.mean and a.num_classes == digits.num_classes
    assert len(digits.subset(train=None, test=5).train_y) == len(digits.train_y)
    with pytest.raises(DataError, match="at least 1 train"):
        digits.subset(train=0, test=None)


def test_imagedata_rejects_malformed_tensors(digits: ImageData) -> None:
    with pytest.raises(DataError, match="labels must lie in"):
        ImageData.build(
            name="bad",
            train_x=digits.train_x,
            train_y=digits.train_y,
            test_x=digits.test_x,
            test_y=digits.test_y,
            num_classes=3,
        )
    with pytest.raises(DataError, match="uint8 NCHW"):
        ImageData.build(
            name="bad",
            train_x=digits.train_x.float(),
            train_y=digits.train_y,
            test_x=digits.test_x,
            test_y=digits.test_y,
        )


# --- batching --------------------------------------------------------------------------------


def test_batches_are_normalised(digits: ImageData) -> None:
    xs, ys = zip(*iterate_batches(digits, "train", 256))
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (1437, 3, 32, 32)
    assert torch.equal(y, digits.train_y)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    assert torch.allclose(x[:4], normalize(digits.train_x[:4], digits.mean, digits.std))


def test_batch_limit_sizes_and_shuffle(digits: ImageData) -> None:
    sizes = [len(y) for _, y in iterate_batches(digits, "test", 100)]
    assert sizes == [100, 100, 100, 60]
    assert len(list(iterate_batches(digits, "train", 100, limit=3))) == 3
    g = torch.Generator().manual_seed(0)
    shuffled = torch.cat([y for _, y in iterate_batches(digits, "test", 100, shuffle=True, generator=g)])
    assert not torch.equal(shuffled, digits.test_y)
    assert torch.equal(shuffled.sort().values, digits.test_y.sort().values)
    with pytest.raises(UnknownNameError, match="'val'"):
        iterate_batches(digits, "val", 10)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="batch_size"):
        iterate_batches(digits, "train", 0)


def test_augment_is_seeded_and_crops_and_flips(digits: ImageData) -> None:
    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return next(iterate_batches(digits, "train", 64, shuffle=True, augment=True, generator=g))[0]

    a, b, c = run(1), run(1), run(2)
    assert a.shape == (64, 3, 32, 32) and a.is_contiguous()
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    plain = next(iterate_batches(digits, "train", 64))[0]
    aug = next(iterate_batches(digits, "train", 64, augment=True, generator=torch.Generator().manual_seed(0)))[0]
    # Every augmented image is a (possibly flipped) shifted window of its zero-padded original.
    padded = torch.nn.functional.pad(plain, (4, 4, 4, 4))
    for orig, out in zip(padded, aug):
        windows = [orig[:, i : i + 32, j : j + 32] for i in range(9) for j in range(9)]
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(2)) for w in windows)
    assert not torch.equal(aug, plain)


# --- npz -------------------------------------------------------------------------------------


def _write_npz(
    directory: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], prefix: str = "toy-"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / f"{prefix}train.npz", x=train[0], y=train[1])
    np.savez(directory / f"{prefix}test.npz", x=test[0], y=test[1])
    return directory


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize(
    ("shape", "to_nchw"),
    [
        ((8, 10, 3), lambda x: x.transpose(0, 3, 1, 2)),
        ((3, 8, 10), lambda x: x),
        ((8, 10), lambda x: x[:, None]),
        ((8, 10, 1), lambda x: x.transpose(0, 3, 1, 2)),
    ],
    ids=["NHWC", "NCHW", "grey-NHW", "grey-NHWC"],
)
def test_npz_layouts(tmp_path: Path, shape: tuple[int, ...], to_nchw: Callable[[np.ndarray], np.ndarray]) -> None:
    train_x, test_x = _images(12, shape), _images(5, shape, seed=1)
    y_train, y_test = np.arange(12) % 4, np.array([0, 1, 2, 3, 6], dtype=np.uint8)
    data = load_data(f"npz:{_write_npz(tmp_path / 'ds', (train_x, y_train), (test_x, y_test))}")
    assert data.name == "ds" and data.num_classes == 7
    assert data.test_y.dtype == torch.int64 and data.train_x.is_contiguous()
    np.testing.assert_array_equal(data.train_x.numpy(), to_nchw(train_x))
    np.testing.assert_array_equal(data.test_x.numpy(), to_nchw(test_x))


def test_plain_train_test_npz_names(tmp_path: Path) -> None:
    d = _write_npz(
        tmp_path / "plain", (_images(4, (8, 8, 3)), np.arange(4)), (_images(2, (8, 8, 3)), np.arange(2)), prefix=""
    )
    assert load_data(f"npz:{d}").input_shape == (3, 8, 8)


@pytest.mark.parametrize(
    ("train", "test", "message"),
    [
        ((np.zeros((4, 8, 8, 3), np.float32), np.arange(4)), None, "dtype float32"),
        ((_images(4, (8, 8, 3)), np.arange(3)), None, "'y' has shape"),
        ((_images(4, (8, 8, 3)), np.arange(4) - 1), None, "labels must be >= 0"),
        ((_images(4, (8, 8, 3)), np.linspace(0, 1, 4)), None, "integer class labels"),
        ((_images(4, (8, 8, 3)), np.arange(4)), (_images(2, (9, 9, 3)), np.arange(2)), "holds"),
        ((_images(4, (8, 8, 5)), np.arange(4)), None, "channel axis"),
    ],
    ids=["float-x", "length-mismatch", "negative-label", "float-labels", "shape-mismatch", "no-channel-axis"],
)
def test_bad_npz_is_refused(tmp_path: Path, train: tuple, test: tuple | None, message: str) -> None:
    d = _write_npz(tmp_path / "bad", train, test or (_images(2, (8, 8, 3)), np.arange(2)))
    with pytest.raises(DataError, match=message) as info:
        load_data(f"npz:{d}")
    assert "npz" in str(info.value) or "bad" in str(info.value)  # names the file or directory


def test_npz_missing_key_and_missing_file(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir()
    np.savez(d / "train.npz", images=_images(2, (8, 8)), y=np.arange(2))
    np.savez(d / "test.npz", x=_images(2, (8, 8)), y=np.arange(2))
    with pytest.raises(DataError, match=r"train\.npz lacks key"):
        load_data(f"npz:{d}")
    (d / "test.npz").unlink()
    with pytest.raises(DataError, match="exactly one .npz file with 'test'"):
        load_data(f"npz:{d}")


def test_npz_limits(tmp_path: Path) -> None:
    d = _write_npz(tmp_path / "big", (_images(6, (16, 16)), np.arange(6)), (_images(2, (16, 16)), np.arange(2)))
    with pytest.raises(UnsafeInputError, match="max_images=5"):
        load_data(f"npz:{d}", limits=DataLimits(max_images=5))
    with pytest.raises(UnsafeInputError, match="max_pixels_per_image=100"):
        load_data(f"npz:{d}", limits=DataLimits(max_pixels_per_image=100))


class _Payload:
    """Unpickling this creates ``marker``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def test_pickled_object_array_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = np.empty(4, dtype=object)
    payload[:] = [_Payload(marker)] * 4
    d = tmp_path / "evil"
    d.mkdir()
    np.savez(d / "train.npz", x=payload, y=np.arange(4))
    np.savez(d / "test.npz", x=_images(2, (8, 8)), y=np.arange(2))
    with pytest.raises(DataError, match="dtype object"):
        load_data(f"npz:{d}")
    assert not marker.exists()
    # The payload is live: loading it the unsafe way would have run it.
    np.load(d / "train.npz", allow_pickle=True)["x"]
    assert marker.exists()


def test_raw_pickle_disguised_as_npz_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    d = tmp_path / "evil"
    d.mkdir()
    (d / "train.npz").write_bytes(pickle.dumps(_Payload(marker)))
    np.savez(d / "test.npz", x=_images(2, (8, 8)), y=np.arange(2))
    with pytest.raises(DataError, match="train.npz"):
        load_data(f"npz:{d}")
    assert not marker.exists()


@pytest.mark.skipif(not MNIST_DIR.is_dir(), reason="shared MNIST data is not present")
def test_real_mnist_npz() -> None:
    data = load_data(f"npz:{MNIST_DIR}")
    assert data.input_shape == (1, 28, 28) and data.num_classes == 10
    assert (len(data.train_y), len(data.test_y)) == (60000, 10000)
    assert data.mean[0] == pytest.approx(0.1307, abs=1e-4) and data.std[0] == pytest.approx(0.3081, abs=1e-4)
    small = data.subset(train=512, test=128, seed=0)
    x, y = next(iterate_batches(small, "train", 128, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert x.shape == (128, 1, 28, 28) and y.max() < 10


# --- image folders ---------------------------------------------------------------------------

COLOURS = {"cat": (255, 0, 0), "dog": (0, 0, 255), "fox": (0, 255, 0)}


def _write_folder(root: Path, test_name: str = "test") -> Path:
    """Solid-colour PNG/JPEG images of varying size, one colour per class, plus a stray text file."""
    for split, count in (("train", 3), (test_name, 1)):
        for cls, colour in COLOURS.items():
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                suffix = ".png" if i % 2 == 0 else ".JPG"
                Image.new("RGB", (20 + 7 * i, 12 + 3 * i), colour).save(d / f"img{i}{suffix}")
            (d / "notes.txt").write_text("not an image")
    (root / "train" / "README.md").write_text("ignored")
    return root


def test_folder_layout(tmp_path: Path) -> None:
    data = load_data(f"folder:{_write_folder(tmp_path / 'pets')}")
    assert data.name == "pets" and data.input_shape == (3, 32, 32) and data.num_classes == 3
    assert (len(data.train_y), len(data.test_y)) == (9, 3)
    assert data.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for cls, label in (("cat", 0), ("dog", 1), ("fox", 2)):
        pixel = data.train_x[data.train_y == label].tensor()[0, :, 16, 16]
        assert (pixel.int() - torch.tensor(COLOURS[cls])).abs().max() <= 8


def test_folder_val_and_image_size(tmp_path: Path) -> None:
    pre = Preprocess(size=(16, 24))
    data = load_data(f"folder:{_write_folder(tmp_path / 'pets', 'val')}", preprocess=pre)
    assert data.input_shape == (3, 16, 24) and len(data.test_y) == 3
    assert data.preprocess is not None and data.preprocess.size == (16, 24) and data.preprocess.mean == data.mean


def test_folder_centre_crop_and_images_smaller_than_the_crop(tmp_path: Path) -> None:
    """A centre crop takes the middle of the resized image; an image smaller than the crop is refused, named."""
    root = tmp_path / "halves"
    for split in ("train", "test"):
        d = root / split / "a"
        d.mkdir(parents=True)
        img = Image.new("RGB", (40, 20), (255, 0, 0))
        img.paste((0, 0, 255), (10, 0, 30, 20))  # blue middle half, red outer quarters
        img.save(d / "img.png")
    pre = Preprocess(size=(16, 16), crop="center", resize=16, interpolation="nearest", normalize="none")
    data = load_data(f"folder:{root}", preprocess=pre)
    assert data.input_shape == (3, 16, 16) and data.mean == (0.0,) * 3 and data.std == (1.0,) * 3
    image = data.train_x.tensor()[0]
    assert image[2].min() == 255 and image[0].max() == 0  # only the blue middle is kept
    with pytest.raises(
        DataError, match=r"img\.png is 40x20 pixels .* smaller than the model's 24x24 .*--input-size 20"
    ):
        load_data(f"folder:{root}", preprocess=Preprocess(size=(24, 24), crop="center", resize=24))


def test_npz_at_an_input_size_and_imagenet_statistics(tmp_path: Path) -> None:
    rgb = _write_npz(tmp_path / "rgb", (_images(4, (16, 16, 3)), np.arange(4)), (_images(2, (16, 16, 3)), np.arange(2)))
    data = load_data(f"npz:{rgb}", preprocess=Preprocess(size=(12, 10), normalize="imagenet"))
    assert data.input_shape == (3, 12, 10) and data.mean == (0.485, 0.456, 0.406)
    with pytest.raises(DataError, match=r"16x16 pixels .* smaller than the model's 20x20"):
        load_data(f"npz:{rgb}", preprocess=Preprocess(size=(20, 20), crop="center", resize=23))
    grey = _write_npz(tmp_path / "grey", (_images(4, (8, 8)), np.arange(4)), (_images(2, (8, 8)), np.arange(2)))
    with pytest.raises(SpecError, match="ImageNet's statistics have 3 values but the model's inputs have 1 channels"):
        load_data(f"npz:{grey}", preprocess=Preprocess(normalize="imagenet"))


def test_folder_refusals(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "pets")
    with pytest.raises(UnsafeInputError, match=r"img0\.png is 20x12 pixels"):
        load_data(f"folder:{root}", limits=DataLimits(max_pixels_per_image=100))
    with pytest.raises(UnsafeInputError, match="max_images=5"):
        load_data(f"folder:{root}", limits=DataLimits(max_images=5))
    (root / "train" / "cat" / "link.png").symlink_to(root / "train" / "dog" / "img0.png")
    with pytest.raises(UnsafeInputError, match=r"link\.png is a symlink"):
        load_data(f"folder:{root}")
    (root / "train" / "cat" / "link.png").unlink()
    (root / "train" / "emu").mkdir()
    with pytest.raises(DataError, match="emu holds no images"):
        load_data(f"folder:{root}")
    (root / "train" / "emu").rmdir()
    (root / "train" / "dog" / "img1.JPG").write_bytes(b"not really a jpeg")
    with pytest.raises(DataError, match=r"img1\.JPG"):
        load_data(f"folder:{root}")


def test_folder_test_class_missing_from_train(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "pets")
    (root / "test" / "owl").mkdir()
    Image.new("RGB", (8, 8)).save(root / "test" / "owl" / "a.png")
    with pytest.raises(DataError, match=r"\['owl'\]"):
        load_data(f"folder:{root}")


def test_unknown_ref() -> None:
    with pytest.raises(UnknownNameError, match="imagenet.*digits"):
        load_data("imagenet")
    with pytest.raises(UnknownNameError, match="npz:DIR"):
        load_data("/some/dir")


# --- archives of datasets --------------------------------------------------------------------


def _zip_dir(src: Path, archive: Path, top: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, f"{top}{path.relative_to(src).as_posix()}")
    return archive


def test_zip_of_folder_with_top_dir_loads(tmp_path: Path) -> None:
    archive = _zip_dir(_write_folder(tmp_path / "pets"), tmp_path / "pets.zip", top="pets/")
    work = tmp_path / "work"
    for ref in (str(archive), f"folder:{archive}"):
        data = load_data(ref, work_dir=work)
        assert data.name == "pets" and data.num_classes == 3 and len(data.train_y) == 9


def test_tar_gz_of_folder_and_of_npz_load(tmp_path: Path) -> None:
    folder = _write_folder(tmp_path / "pets")
    with tarfile.open(tmp_path / "pets.tar.gz", "w:gz") as tf:
        tf.add(folder, arcname=".")
    data = load_data(str(tmp_path / "pets.tar.gz"))
    assert data.input_shape == (3, 32, 32) and len(data.test_y) == 3
    npz_dir = _write_npz(tmp_path / "arrays", (_images(6, (8, 8)), np.arange(6)), (_images(2, (8, 8)), np.arange(2)))
    with tarfile.open(tmp_path / "arrays.tgz", "w:gz") as tf:
        tf.add(npz_dir, arcname="arrays")
    data = load_data(f"npz:{tmp_path / 'arrays.tgz'}")
    assert data.name == "arrays" and data.input_shape == (1, 8, 8)
    with pytest.raises(DataError, match="train/ and test/ folders"):
        load_data(f"folder:{tmp_path / 'arrays.tgz'}")


def test_missing_archive_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.zip does not exist"):
        load_data(str(tmp_path / "nope.zip"))


# --- folders read lazily (issue 18) ----------------------------------------------------------


def _gradient_folder(root: Path, count: int, side: int) -> Path:
    for split, n in (("train", count), ("test", 4)):
        for label in range(2):
            d = root / split / f"c{label}"
            d.mkdir(parents=True)
            for i in range(n // 2):
                img = Image.linear_gradient("L").resize((side + i % 7, side)).convert("RGB")
                img.save(d / f"{i}.png")
    return root


def test_folder_images_stay_on_disk_and_memory_stays_bounded(tmp_path: Path) -> None:
    """128 images at 64 px would need 1.5 MB decoded at once, over a 0.5 MB cap; batches of 8
    are decoded one at a time, so the peak of what is decoded stays far under it."""
    import tracemalloc

    from autoprune.data.lazy import LazyImages

    root = _gradient_folder(tmp_path / "grad", 128, 64)
    data = load_data(f"folder:{root}", limits=DataLimits(max_array_bytes=500_000), preprocess=Preprocess(size=(64, 64)))
    assert isinstance(data.train_x, LazyImages) and data.input_shape == (3, 64, 64)
    tracemalloc.start()
    seen = sum(len(y) for _, y in iterate_batches(data, "train", 8))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seen == 128 and peak < 400_000


def test_large_inputs_train_on_random_resized_crops_reproducibly(tmp_path: Path, monkeypatch) -> None:
    root = _gradient_folder(tmp_path / "grad", 64, 72)
    data = load_data(f"folder:{root}", preprocess=Preprocess(size=(64, 64)))

    def epoch(workers: str) -> torch.Tensor:
        monkeypatch.setenv("AUTOPRUNE_LOADER_WORKERS", workers)
        batches = iterate_batches(
            data, "train", 8, shuffle=True, augment=True, generator=torch.Generator().manual_seed(3)
        )
        return torch.cat([x for x, _ in batches])

    in_process, two_workers = epoch("0"), epoch("2")
    assert in_process.shape == (64, 3, 64, 64) and torch.equal(in_process, two_workers)
    plain = torch.cat(
        [x for x, _ in iterate_batches(data, "train", 8, shuffle=True, generator=torch.Generator().manual_seed(3))]
    )
    assert not torch.allclose(in_process, plain)  # crops and flips, not the evaluation resize


def test_an_image_that_does_not_decode_is_named(tmp_path: Path) -> None:
    root = _gradient_folder(tmp_path / "grad", 8, 32)
    broken = root / "train" / "c1" / "0.png"
    broken.write_bytes(broken.read_bytes()[:80])  # the header survives, the pixels do not
    data = load_data(f"folder:{root}", preprocess=Preprocess(normalize="none"))
    with pytest.raises(DataError, match=r"could not read image .*c1/0\.png"):
        list(iterate_batches(data, "train", 4))
