"""anomalib's command line (``anomalib train/fit/test/predict/export/benchmark``), four narrow fixes.

1. **Seed.** anomalib 2.7's CLI defines ``--seed_everything`` (and every config of this package sets it) but
   never applies it. For a run of this package's models or datamodules an integer seed is now applied with
   ``lightning.seed_everything(seed, workers=True)`` (what Lightning's own CLI does) before the model and data are
   built; every other model runs as in anomalib, unseeded. ``true`` (anomalib's default, "a random seed") and
   ``false`` change nothing: no seed is set, as before.
2. **Errors.** A ``ValueError``/``FileNotFoundError``... raised by a constructor of this package's models or
   datamodules reaches jsonargparse, which buries its message in a long "Expected a <class 'NoneType'>"
   traceback. It is printed instead as the last line, and the command exits with status 2. The errors the
   package raises while the command runs about what the user gave (:class:`~anomalib_faprompt.errors.InputError`:
   a checkpoint that does not fit or cannot be read, data that is missing or inconsistent, a benchmark config
   naming missing checkpoints, a file that cannot be decoded) are reported the same way; a benchmark with failed
   jobs exits with 1.
3. **Quiet.** A run of this package's models filters the known harmless messages of :mod:`.quiet`.
4. **No download into a mistyped folder.** A run of this package's models on anomalib's ``MVTecAD`` or ``Visa``
   datamodule whose category is not under ``root`` stops in one line (exit 2) when anomalib would download the
   dataset into a folder not named like its default (``MVTecAD``, ``visa``).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from anomalib_faprompt.integration.patching import Patch, patching
from anomalib_faprompt.integration.quiet import quiet_command

SEEDED_SUBCOMMANDS = {"fit", "validate", "test", "train", "predict", "export"}


def _class_path(config: Any, key: str) -> str:
    value = config.get(key) if hasattr(config, "get") else None
    class_path = value.get("class_path") if hasattr(value, "get") else value
    return class_path if isinstance(class_path, str) else ""


def _is_package_class(class_path: str) -> bool:
    from anomalib_faprompt.integration.publish import MODEL_NAMES

    return class_path.startswith("anomalib_faprompt.") or class_path in MODEL_NAMES


def apply_seed(subcommand: str, config: Any) -> int | None:
    """Apply an integer ``seed_everything`` of a Lightning subcommand's config; return it."""
    seed = config.get("seed_everything") if subcommand in SEEDED_SUBCOMMANDS else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None
    from lightning.pytorch import seed_everything

    return seed_everything(seed, workers=True)


def _package_classes() -> list[type]:
    """The classes a CLI user builds from this package: its models and datamodules."""
    from anomalib.data import AnomalibDataModule

    import anomalib_faprompt.data as data
    import anomalib_faprompt.models as models

    classes = [getattr(models, name) for name in models.__all__]
    classes += [
        value
        for value in (getattr(data, name) for name in getattr(data, "__all__", []))
        if isinstance(value, type) and issubclass(value, AnomalibDataModule)
    ]
    return classes


def _recorded(init: Any, cls: type, errors: list[tuple[type, BaseException]]) -> Any:
    @functools.wraps(init)
    def recorded(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except Exception as error:
            errors.append((cls, error))
            raise

    return recorded


def _recording(classes: list[type], errors: list[tuple[type, BaseException]]) -> Patch:
    """Wrap the constructors of ``classes`` so that an exception they raise is also appended to ``errors``."""
    patch = Patch()
    for cls in classes:
        if "__init__" in vars(cls):
            patch.set(cls, "__init__", _recorded(vars(cls)["__init__"], cls, errors))
    return patch


def exit_with(error: BaseException, what: str) -> None:
    """Print ``what`` and the package's error as the last line(s); exit with status 2.

    An error re-raised from a ``DataLoader`` worker carries the worker's traceback in its message: only its
    last line, the error itself, is printed.
    """
    message = f"{type(error).__name__}: {error}"
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1]
    print(f"{what}:", file=sys.stderr)  # noqa: T201
    print(message, file=sys.stderr)  # noqa: T201
    raise SystemExit(2) from None


def check_anomalib_data(datamodule: Any) -> None:  # noqa: ANN401
    """Refuse, in one line, anomalib's MVTecAD or Visa data whose category is not where ``root`` says.

    anomalib's datamodule would download the dataset into a mistyped or custom folder (offline: a ``URLError``
    traceback); the package's own datamodule checks this itself.
    """
    from anomalib.data import MVTecAD, Visa  # noqa: PLC0415

    from anomalib_faprompt.data.sources import check_category  # noqa: PLC0415

    if type(datamodule) in (MVTecAD, Visa):
        check_category(type(datamodule).__name__, datamodule.root, str(datamodule.category), "data.init_args.root")


def patch_cli(module: Any) -> None:
    """Apply the fixes to ``anomalib.cli.cli.AnomalibCLI``."""
    cli_class = module.AnomalibCLI
    original_instantiate, original_run = cli_class.instantiate_classes, cli_class._run_subcommand  # noqa: SLF001

    def instantiate_classes(self: Any) -> None:
        subcommand = self.config["subcommand"]
        config = self.config.get(subcommand)
        ours = config is not None and any(_is_package_class(_class_path(config, key)) for key in ("model", "data"))
        self.package_run = ours
        if not ours:
            original_instantiate(self)
            return
        apply_seed(subcommand, config)
        quiet_command(subcommand)
        errors: list[tuple[type, BaseException]] = []
        recording = _recording(_package_classes(), errors)
        try:
            original_instantiate(self)
        except Exception:
            if not errors:
                raise
            cls, error = errors[-1]
            exit_with(error, f"anomalib {subcommand}: {cls.__name__} could not be built")
        finally:
            recording.undo()

    def run_subcommand(self: Any) -> None:
        from anomalib_faprompt.errors import InputError
        from anomalib_faprompt.integration.benchmark import STATE

        try:
            if getattr(self, "package_run", False):
                check_anomalib_data(self.datamodule)
            original_run(self)
        except InputError as error:
            exit_with(error, f"anomalib {self.subcommand}")
        if self.subcommand == "benchmark" and STATE.failed:
            raise SystemExit(1)

    instantiate_classes.__doc__ = original_instantiate.__doc__
    run_subcommand.__doc__ = original_run.__doc__
    with patching("the fixes to anomalib's command line") as patch:
        if patch is not None:
            patch.set(cli_class, "instantiate_classes", instantiate_classes)
            patch.set(cli_class, "_run_subcommand", run_subcommand)
