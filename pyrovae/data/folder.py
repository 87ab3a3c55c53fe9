"""A folder of images (``data.dataset = "folder"``), read with ``torchvision.datasets.ImageFolder``.

Layouts of ``data.path`` = DIR (hidden files and folders, names starting with ``.``, are skipped):

* ``DIR/<class>/*.png`` — class sub-folders give the labels (their sorted names → 0, 1, ...,
  ImageFolder's rule); ``DIR/*.png`` — a flat folder, unlabeled. Not both at once.
* ``DIR/train/...`` and ``DIR/test/...`` (each of either kind above) — the files' own split; the
  test folder's classes must be among the train folder's and take the same indices. Otherwise
  the split is seeded: :func:`~pyrovae.data.sources.seeded_split`.

Every file must be an image PIL can open, of an 8-bit mode: grayscale (``1``, ``L``, ``LA``) or
colour (``RGB``, ``RGBA``, ``P``, ...); alpha is dropped. ``channels`` 0 makes the set grayscale
when every image is, else RGB; 1 or 3 forces it. ``image_size`` 0 keeps the files' size (all
must share it); s > 0 resizes each image's shorter side to s (bilinear, antialiased) and
centre-crops s × s. Examples are uint8 ``[H, W]`` (grayscale, as MNIST) or ``[3, H, W]`` (RGB),
8 bits: the model sees ``x / 255``. All headers are read on load (a file that is not an image or
mixed sizes are found before training); pixels are decoded on read.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from ..errors import DataError
from .sources import Examples, Source, require_path, seeded_split

GRAY_MODES = ("1", "L", "LA")
COLOUR_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _visible(path: str, root: str | os.PathLike = "") -> bool:
    """Whether no component of ``path`` below ``root`` (its basename, with no root) starts with ``.``."""
    below = os.path.relpath(path, root) if root else os.path.basename(path)
    return not any(part.startswith(".") for part in Path(below).parts)


def _subfolders(directory) -> list[str]:
    return sorted(e.name for e in os.scandir(directory) if e.is_dir() and _visible(e.name))


def _image_folder(root: Path, classes: list[str] | None = None):
    """``ImageFolder`` over ``root``'s class sub-folders, or over ``root`` itself (one class ``""``)
    when it has none; ``classes`` fixes the class list (a test folder takes the train folder's)."""
    from torchvision.datasets import ImageFolder

    class Folder(ImageFolder):
        def find_classes(self, directory):
            found = _subfolders(directory)
            names = classes if classes is not None else (found or [""])
            unknown = sorted(set(found) - set(names)) if names != [""] else found
            if unknown:
                raise DataError(f"folder {directory} has class folder(s) {unknown} that its train folder lacks "
                                f"(train classes: {names}): the labels would not match; rename or remove them")
            return names, {c: i for i, c in enumerate(names)}

    loose = [e.name for e in os.scandir(root) if e.is_file() and _visible(e.name)]
    if loose and _subfolders(root):
        raise DataError(f"folder {root} holds both files ({loose[0]}, ...) and sub-folders "
                        f"({_subfolders(root)[0]}, ...): put every image in a class sub-folder, or none")
    folder = Folder(str(root), is_valid_file=lambda path: _visible(path, root), allow_empty=True)
    if not folder.samples:
        raise DataError(f"folder {root} holds no image files: expected images (.png, .jpg, ...) in it or in "
                        f"class sub-folders of it")
    return folder


def _header(path: str) -> tuple[tuple[int, int], str]:
    """(size (W, H), mode) of the image at ``path``, from its header; DataError if it is none."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"file {path} is not an image PIL can read ({type(err).__name__}: {err}): remove or "
                        f"replace it (files starting with '.' are skipped)") from None
    if mode not in GRAY_MODES + COLOUR_MODES:
        raise DataError(f"image {path} has mode {mode!r}: expected 8-bit grayscale ({', '.join(GRAY_MODES)}) or "
                        f"colour ({', '.join(COLOUR_MODES)}); convert it to 8 bits")
    return size, mode


class ImageFiles(Examples):
    """Images decoded on read: uint8 ``[H, W]`` (``mode`` ``"L"``) or ``[3, H, W]`` (``"RGB"``),
    resized and centre-cropped to ``image_size`` when it is > 0."""

    bits = 8

    def __init__(self, files: list[str], mode: str, size: tuple[int, int], image_size: int, where: str):
        self.files, self.mode, self.image_size, self.where = files, mode, image_size, where
        h, w = (image_size, image_size) if image_size else (size[1], size[0])
        self.shape = (h, w) if mode == "L" else (3, h, w)

    def __len__(self) -> int:
        return len(self.files)

    def identity(self, digest) -> None:
        """Each file's path relative to the folder and its size, and the size and mode read."""
        digest.update(repr((self.shape, self.mode, self.image_size)).encode())
        for f in self.files:
            digest.update(f"{os.path.relpath(f, self.where)}\0{os.path.getsize(f)}\n".encode())

    def read(self, i: int) -> Tensor | str:
        from PIL import Image
        from torchvision.transforms import functional as F

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert(self.mode)
            if self.image_size:
                im = F.center_crop(F.resize(im, self.image_size), self.image_size)
            x = F.pil_to_tensor(im)
        except (OSError, ValueError, SyntaxError) as err:
            return f"image {path} cannot be decoded ({type(err).__name__}: {err}): remove or replace it"
        x = x[0] if self.mode == "L" else x
        if tuple(x.shape) != self.shape:
            return f"image {path} decodes to {list(x.shape)}, its header said {list(self.shape)}: replace it"
        return x


def image_files(files: list[str], root: Path, image_size: int, channels: int) -> ImageFiles:
    """:class:`ImageFiles` over ``files`` after reading every header: grayscale or RGB (``channels``
    0: grayscale when all are), one size (unless ``image_size`` > 0)."""
    headers = {f: _header(f) for f in files}
    gray = all(mode in GRAY_MODES for _, mode in headers.values())
    mode = "L" if channels == 1 or (channels == 0 and gray) else "RGB"
    sizes = {}
    for f, (size, _) in headers.items():
        sizes.setdefault(size, f)
    if not image_size and len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise DataError(f"folder {root} holds images of different sizes ({f1}: {s1[0]}×{s1[1]}, {f2}: "
                        f"{s2[0]}×{s2[1]}): set data.image_size to resize and crop them all to one square size")
    return ImageFiles(files, mode, next(iter(sizes)), image_size, str(root))


def load_folder(split: str, data_dir: Path, seed: int, *, path: str, image_size: int = 0, channels: int = 0,
                test_fraction: float = 0.1, split_seed: int = 0) -> Source:
    """One split of the image folder ``path`` (see the module doc) as a :class:`Source`."""
    root = require_path(path, "data.path", folder=True)
    if channels not in (0, 1, 3):
        raise DataError(f"data.channels must be 0 (as the images are), 1 (grayscale) or 3 (RGB), got {channels!r}")
    if (root / "train").is_dir() and (root / "test").is_dir():
        train = _image_folder(root / "train")
        test = _image_folder(root / "test", train.classes)
        files = [f for f, _ in train.samples + test.samples]
        n_train = len(train.samples)
        index = torch.arange(n_train) if split == "train" else torch.arange(n_train, len(files))
        note = f"folder {root}: its own split, {n_train} train / {len(files) - n_train} test images"
    else:
        train = test = _image_folder(root)
        files = [f for f, _ in train.samples]
        index, note = seeded_split(len(files), split, test_fraction, split_seed, f"folder {root}")
    examples = image_files(files, root, image_size, channels)
    labels = None
    if train.classes != [""]:
        labels = torch.tensor([c for _, c in train.samples + (test.samples if test is not train else [])])[index]
    return Source(examples, index, labels, note)
