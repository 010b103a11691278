"""Weights files read without running code from them, and what to say of one that cannot be read.

Three kinds of file reach the package: ``torch.save`` files in the zip format (memory-mapped), in torch's legacy
format (before 1.6, read without memory mapping, which needs the zip format) and TorchScript archives, the format
of OpenAI's own CLIP files (``ViT-L-14-336px.pt``). ``torch.save`` files are unpickled with ``weights_only=True``:
a file holding Python objects other than tensors, containers and the globals a caller allows is refused, for
safety. A TorchScript archive holds a compiled program and its tensors, no pickled Python objects; it is read as
open_clip's ``load_openai_model`` reads it (``torch.jit.load``, then its state dict).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

__all__ = [
    "is_torchscript",
    "load_torch_file",
    "torch_reason",
    "torchscript_state_dict",
    "unreadable_reason",
    "unsafe_objects",
]

# Entries of OpenAI's TorchScript CLIP state dict that are no weights (open_clip drops them too).
TORCHSCRIPT_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_UNSAFE = "Weights only load failed"


def is_torchscript(path: str | Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip file whose records include ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def torchscript_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a TorchScript archive (CPU), without OpenAI's non-weight entries."""
    state = torch.jit.load(str(path), map_location="cpu").state_dict()
    return {key: value for key, value in state.items() if key not in TORCHSCRIPT_EXTRA_KEYS}


def torch_reason(error: BaseException) -> str:
    """The informative line of what ``torch.load`` raised, leaving out its advice to load with ``weights_only=False``.

    torch's weights-only message starts with that advice and ends with a pointer to its documentation; the line
    between them says what it met (e.g. "Unsupported operand 110" for a file that is no pickle).
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith(_UNSAFE):
        found = [line for line in lines[1:] if not line.startswith(("Please file", "Check the documentation"))]
        return found[0] if found else "not a file of weights"
    return lines[0] if lines else type(error).__name__


def unsafe_objects(error: BaseException) -> str | None:
    """What to say of a file that ``torch.load(weights_only=True)`` refused for its Python objects, else ``None``.

    Names the first refused global; never advises loading with ``weights_only=False``, as torch's own message does.
    """
    text = str(error)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if not (isinstance(error, pickle.UnpicklingError) and _UNSAFE in text and found):
        return None
    return f"holds Python objects other than weights ({found.group(1)}) and is not loaded, for safety"


def unreadable_reason(path: str | Path, error: BaseException, what: str) -> str:
    """Why ``torch.load`` could not read ``path``, as the rest of a sentence that starts with the file's name.

    Args:
        path: The file.
        error: What ``torch.load`` raised.
        what: What the file was to be, e.g. "anomalib checkpoint".
    """
    unsafe = unsafe_objects(error)
    if unsafe:
        return unsafe
    with Path(path).open("rb") as file:
        written_by_torch = file.read(2) in (b"PK", b"\x80\x02")  # a zip archive (torch.save), or a legacy pickle
    kind = f"damaged or truncated (torch: {torch_reason(error)})" if written_by_torch else "not written by torch.save"
    return f"is not a readable {what}: the file is {kind}"


def load_torch_file(path: str | Path) -> object:
    """``torch.load`` on the CPU with ``weights_only=True``, memory-mapped where the format allows it.

    Globals beyond torch's own are allowed by the caller (``torch.serialization.safe_globals``).

    Raises:
        Whatever ``torch.load`` raises; :func:`unreadable_reason` words it.
    """
    return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
