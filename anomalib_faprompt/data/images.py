"""Reading images and masks: upright, 16-bit files scaled correctly, damaged files named.

anomalib's ``read_image`` converts every file to 8-bit RGB, which clips 16-bit grayscale PNGs to white, and
ignores the EXIF orientation tag, so that a photo taken with the camera turned is read sideways; its
``read_mask`` does the same to masks and thresholds JPEG artefacts as defect pixels. These readers turn a
tagged file upright, as image viewers show it (``PIL.ImageOps.exif_transpose``), and give the same tensors
as anomalib's for untagged 8-bit files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps
from torchvision.transforms.v2.functional import to_dtype, to_image
from torchvision.tv_tensors import Image, Mask

from anomalib_faprompt.errors import InputError

__all__ = ["LOSSY_SUFFIXES", "UnreadableFileError", "read_image", "read_mask", "reads_unlike_anomalib"]

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
LOSSY_SUFFIXES = (".jpg", ".jpeg")
_SIXTEEN_BIT_MAX = 65535
ORIENTATION = 0x0112  # the EXIF tag: how to turn the stored pixels upright (1: they are)
SKIP_ADVICE = (
    "Replace or remove the file, or set `skip_unreadable: true` on the data module to skip unreadable files and "
    "list them at the end."
)


class UnreadableFileError(InputError, OSError):
    """An image or mask file that cannot be decoded (truncated, damaged or not an image).

    Built with :meth:`of`; it takes one message argument, so that a ``DataLoader`` worker can re-raise it.
    """

    path: str = ""
    reason: str = ""

    @classmethod
    def of(cls, path: str | Path, error: BaseException) -> UnreadableFileError:
        """The error for ``path``, which failed with ``error``."""
        return cls._build(str(path), f"{type(error).__name__}: {error}", SKIP_ADVICE)

    def with_advice(self, advice: str) -> UnreadableFileError:
        """The same error (file and reason) with other advice."""
        return self._build(self.path, self.reason, advice)

    @classmethod
    def _build(cls, path: str, reason: str, advice: str) -> UnreadableFileError:
        unreadable = cls(f"Cannot read '{path}' ({reason}). {advice}")
        unreadable.path, unreadable.reason = path, reason
        return unreadable


def _open(path: str | Path) -> PILImage.Image:
    """The decoded file, turned upright by its EXIF orientation tag; a decoding failure is an error naming it."""
    try:
        with PILImage.open(path) as image:
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image
    except (OSError, SyntaxError, ValueError) as error:
        raise UnreadableFileError.of(path, error) from error


def _sixteen_bit(image: PILImage.Image, path: str | Path) -> np.ndarray:
    """The values of a 16-bit grayscale image as float32 in [0, 1]."""
    array = np.asarray(image)
    if array.size and (array.min() < 0 or array.max() > _SIXTEEN_BIT_MAX):
        msg = f"'{path}' is a 32-bit integer image with values outside [0, 65535]; convert it to 8 or 16 bits."
        raise ValueError(msg)
    return array.astype(np.float32) / _SIXTEEN_BIT_MAX


def reads_unlike_anomalib(path: str | Path) -> bool:
    """Whether anomalib's reading (``PIL.Image.open(path).convert("RGB")``) gives other pixels than :func:`read_image`.

    True for a 16-bit grayscale file (clipped to white there) and for a file tagged with an EXIF orientation other
    than upright (read as stored, sideways or upside down); False for a file that cannot be read.
    """
    try:
        with PILImage.open(path) as image:
            return image.mode in SIXTEEN_BIT_MODES or image.getexif().get(ORIENTATION, 1) != 1
    except (OSError, SyntaxError, ValueError):
        return False


def read_image(path: str | Path) -> Image:
    """An image file as a float RGB tensor ``(3, H, W)`` in [0, 1], upright as its EXIF orientation tag says.

    Untagged 8-bit files give exactly anomalib's ``read_image(path, as_tensor=True)``; a tagged file gives the
    same as its pixels turned upright (``H`` and ``W`` as a viewer shows it); 16-bit grayscale files are
    scaled by 1/65535 (anomalib clips them to white) and repeated over the three channels.

    Raises:
        UnreadableFileError: The file cannot be decoded; the message names it.
    """
    image = _open(path)
    if image.mode in SIXTEEN_BIT_MODES:
        gray = torch.from_numpy(_sixteen_bit(image, path))
        return Image(gray.unsqueeze(0).expand(3, -1, -1).contiguous())
    return to_dtype(to_image(image.convert("RGB")), torch.float32, scale=True)


def read_mask(path: str | Path) -> Mask:
    """A mask file as a ``uint8`` tensor ``(H, W)`` of 0 and 1, upright as its EXIF orientation tag says.

    A pixel is a defect pixel when it is above 0 (anomalib's rule) in lossless files, and above half the
    value range in JPEG files, whose compression leaves small non-zero values around the edges.

    Raises:
        UnreadableFileError: The file cannot be decoded; the message names it.
    """
    image = _open(path)
    if image.mode in SIXTEEN_BIT_MODES:
        values = _sixteen_bit(image, path)
    else:
        values = np.asarray(image.convert("L"), dtype=np.float32) / 255
    threshold = 0.5 if Path(path).suffix.lower() in LOSSY_SUFFIXES else 0.0
    return Mask(torch.from_numpy(values > threshold), dtype=torch.uint8)
