"""The upstream messages this package's commands silence: known, harmless, not actionable; each named alone.

:func:`importing_anomalib_models` filters the two deprecation warnings of importing ``anomalib.models`` (timm's
``timm.models.layers``, anomalib's ``dinov2``) when this package, or a command naming its models, imports it;
:func:`quiet_command` filters the rest for a command line run of this package's models.
"""

from __future__ import annotations

import logging
import sys
import warnings
from itertools import pairwise
from pathlib import Path

from anomalib_faprompt.names import MODEL_NAMES, PACKAGE

IMPORT_WARNINGS = (
    (r"Importing from timm\.models\.layers is deprecated", FutureWarning),
    (r"The anomalib\.models\.components\.dinov2 package is deprecated", FutureWarning),
)
# Python warnings in a run of this package's models, for every subcommand.
RUN_WARNINGS = (
    # Lightning's own internal use of a deprecated torch API (lightning.pytorch.utilities._pytree).
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # The frozen CLIP is in eval mode on purpose; only the prompts (and the prior network) train.
    r"Found \d+ module\(s\) in eval mode at the start of training",
)
# Python warnings of commands that restore a checkpoint into another run folder, or predict on CPU.
RESTORE_WARNINGS = (
    r"The dirpath has changed from",  # test/predict from a training run's checkpoint: nothing is reloaded wrongly
    r"'pin_memory' argument is set as true but no accelerator is found",  # anomalib predict's loader on CPU
)
# Lightning INFO lines (logger name, message start).
LIGHTNING_INFO = (
    "💡 Tip:",  # advertises Lightning's cloud logger on every run
    "The following callbacks returned in `LightningModule.configure_callbacks`",  # the models' own processors
)
LIGHTNING_INFO_LOGGERS = (  # the name depends on which of Lightning's packages was imported last
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
)
# Libraries whose INFO logs flood an export (onnx_ir logs each of ~200 deduplicated initializers).
EXPORT_LOGGERS = ("onnx_ir", "onnxscript")


def _command_names_package(argv: list[str]) -> bool:
    """Whether a command line, or a ``--config``/``-c`` file it names, mentions this package's models."""
    names = (*MODEL_NAMES, PACKAGE)
    files = [value for option, value in pairwise(argv) if option in {"--config", "-c"}]
    texts = [*argv, *(Path(file).read_text(errors="replace") for file in files if Path(file).is_file())]
    return any(name in text for text in texts for name in names)


def importing_anomalib_models() -> None:
    """Before ``anomalib.models`` executes: filter its two import warnings if it is imported for this package.

    The filters stay (other modules imported meanwhile may add filters of their own, which must not be undone);
    they match only these two messages, which are issued only while ``anomalib.models`` is first imported.
    """
    for_cli = "anomalib.cli.cli" in sys.modules and _command_names_package(sys.argv[1:])
    if for_cli or "anomalib_faprompt.models" in sys.modules:
        for message, category in IMPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)


class _DropMessages(logging.Filter):
    """Drops records whose message starts with one of the given texts."""

    def __init__(self, starts: tuple[str, ...]) -> None:
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.starts)


def quiet_command(subcommand: str) -> None:
    """Filter the known messages of a command line run of this package's models (this process only)."""
    for message in RUN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    if subcommand in {"test", "predict", "export", "validate"}:
        for message in RESTORE_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
    for name in LIGHTNING_INFO_LOGGERS:
        logging.getLogger(name).addFilter(_DropMessages(LIGHTNING_INFO))
    if subcommand == "export":
        for name in EXPORT_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
    _one_console_handler()


def _one_console_handler() -> None:
    """Keep the plain one of the two console handlers anomalib's ``configure_logger`` gives the root logger.

    Every INFO line is otherwise printed twice (and the rich copy is wrapped at the terminal width).
    """
    from rich.logging import RichHandler  # noqa: PLC0415  (rich loads with anomalib's logger)

    root = logging.getLogger()
    plain = [handler for handler in root.handlers if type(handler) is logging.StreamHandler]
    if plain:
        for handler in [handler for handler in root.handlers if isinstance(handler, RichHandler)]:
            root.removeHandler(handler)
