"""anomalib's command line with this package's models: seeded, quiet, one-line errors, the zero-shot benchmark.

Each change applies to a run whose ``--model`` or ``--data`` is one of this package's classes (a run of any other
model is anomalib's, unchanged), except the benchmark's, which applies to a config naming this package's models:

1. **Seed.** anomalib 2.7 defines ``--seed_everything`` but never applies it. An integer seed is applied with
   ``lightning.seed_everything(seed, workers=True)`` (what Lightning's own CLI does) before the model and data are
   built; ``true`` (anomalib's default, "a random seed") and ``false`` set no seed, as anomalib.
2. **Errors.** jsonargparse buries a constructor's error, or a value it cannot parse (``--model.temperature nan``),
   in a block of 10 to 20 lines. The command prints the error alone, as its last line, and exits with 2; so it does
   for the errors about what the user gave (:class:`~anomalib_faprompt.errors.InputError`) raised while it runs.
   A ``--default_root_dir`` that cannot be written is named before anything is built.
3. **Quiet.** The known harmless messages of :mod:`.quiet` are filtered.
4. **No download into a mistyped folder.** anomalib's ``MVTecAD`` or ``Visa`` data whose category is not under
   ``root`` stops in one line when anomalib would download the dataset into a folder not named like its default.
5. **Benchmark.** ``anomalib benchmark`` runs :class:`anomalib_faprompt.pipelines.Benchmark`, which runs a config
   of anomalib's models alone as anomalib does; a benchmark with jobs without a result exits with 1.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from anomalib_faprompt.integration.patching import patching
from anomalib_faprompt.integration.publish import MODEL_NAMES
from anomalib_faprompt.integration.quiet import quiet_command

SEEDED_SUBCOMMANDS = {"fit", "validate", "test", "train", "predict", "export"}
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"class_path[= ]'(anomalib_faprompt\.[\w.]+)'")


def _class_path(config: Any, key: str) -> str:  # noqa: ANN401
    value = config.get(key) if hasattr(config, "get") else None
    class_path = value.get("class_path") if hasattr(value, "get") else value
    return class_path if isinstance(class_path, str) else ""


def is_package_run(config: Any) -> bool:  # noqa: ANN401
    """Whether a subcommand's config builds one of this package's models or datamodules."""
    paths = [_class_path(config, key) for key in ("model", "data")] if config is not None else []
    return any(path.startswith("anomalib_faprompt.") or path in MODEL_NAMES for path in paths)


def apply_seed(subcommand: str, config: Any) -> int | None:  # noqa: ANN401
    """Apply an integer ``seed_everything`` of a Lightning subcommand's config; return it."""
    seed = config.get("seed_everything") if subcommand in SEEDED_SUBCOMMANDS else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None
    from lightning.pytorch import seed_everything

    return seed_everything(seed, workers=True)


def package_error(message: str) -> str | None:
    """The error about one of this package's classes in a jsonargparse message, as one line; ``None`` if none.

    jsonargparse lists, under ``Errors:``, why a value fits none of the types it may have (a model is ``None`` or
    an ``AnomalibModule``): the constructor's message, or the nested ``Parser key`` and what it expected.
    """
    if not _CLASS_PATH.search(message) or "Errors:" not in message:
        return None
    head, _, errors = message.partition("Errors:")
    errors = errors.split("Given value type:")[0]
    bullets = [bullet for bullet in re.split(r"\n\s*- ", errors) if bullet.strip()]
    for bullet in bullets:
        lines = [line.strip() for line in bullet.strip().splitlines()]
        if lines[0].startswith("Expected a <class 'NoneType'>"):
            continue
        keys = _PARSER_KEY.findall(head)[:1] + [key for line in lines for key in _PARSER_KEY.findall(line)]
        text = " ".join(line for line in lines if not _PARSER_KEY.fullmatch(line) and "given class_path" not in line)
        return f"--{'.'.join(keys)}: {text}" if len(keys) > 1 else text
    return None


def exit_with(error: BaseException, what: str) -> None:
    """Print ``what`` and the package's error as the last line(s); exit with the error's ``exit_code`` (else 2).

    An error re-raised from a ``DataLoader`` worker carries the worker's traceback in its message: only its
    last line, the error itself, is printed.
    """
    message = f"{type(error).__name__}: {error}"
    if "Original Traceback" in message:
        message = message.rstrip().splitlines()[-1]
    print(f"{what}:", file=sys.stderr)  # noqa: T201
    print(message, file=sys.stderr)  # noqa: T201
    raise SystemExit(getattr(error, "exit_code", 2)) from None


def check_anomalib_data(datamodule: Any) -> None:  # noqa: ANN401
    """Refuse, in one line, anomalib's MVTecAD or Visa data whose category is not where ``root`` says."""
    from anomalib.data import MVTecAD, Visa  # noqa: PLC0415

    from anomalib_faprompt.data.sources import check_category  # noqa: PLC0415

    if type(datamodule) in (MVTecAD, Visa):
        check_category(type(datamodule).__name__, datamodule.root, str(datamodule.category), "data.init_args.root")


def _one_line_parser_errors(parser: Any, subcommand: str = "") -> Any:  # noqa: ANN401
    """Make ``parser.error`` print a parse error about this package's classes as one line (exit 2)."""
    error = parser.error

    def one_line_error(message: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        line = package_error(str(message))
        if line is None:
            error(message, *args, **kwargs)
        print(f"anomalib{' ' + subcommand if subcommand else ''}: {line}", file=sys.stderr)  # noqa: T201
        raise SystemExit(2)

    parser.error = one_line_error
    return parser


def patch_cli(module: Any) -> None:  # noqa: ANN401
    """Apply the changes above to ``anomalib.cli.cli.AnomalibCLI``, once."""
    cli_class = module.AnomalibCLI
    original_init_parser = cli_class.init_parser
    original_instantiate, original_run = cli_class.instantiate_classes, cli_class._run_subcommand  # noqa: SLF001

    def init_parser(**kwargs: Any) -> Any:  # noqa: ANN401
        return _one_line_parser_errors(original_init_parser(**kwargs))

    def instantiate_classes(self: Any) -> None:  # noqa: ANN401
        subcommand = self.config["subcommand"]
        if not is_package_run(self.config.get(subcommand)):
            original_instantiate(self)
            return
        from anomalib_faprompt.errors import InputError  # noqa: PLC0415
        from anomalib_faprompt.runs import check_writable  # noqa: PLC0415

        apply_seed(subcommand, self.config[subcommand])
        quiet_command(subcommand)
        results = self.config[subcommand].get("default_root_dir")
        try:
            if results is not None:
                check_writable(results, "--default_root_dir")
        except InputError as error:
            exit_with(error, f"anomalib {subcommand}")
        try:
            original_instantiate(self)
        except ValueError as error:
            line = package_error(str(error))
            if line is None:
                raise
            name = _CLASS_PATH.search(str(error)).group(1).rsplit(".", 1)[-1]
            print(f"anomalib {subcommand}: {name} could not be built:", file=sys.stderr)  # noqa: T201
            print(line, file=sys.stderr)  # noqa: T201
            raise SystemExit(2) from None

    def run_subcommand(self: Any) -> None:  # noqa: ANN401
        from anomalib_faprompt.errors import InputError  # noqa: PLC0415

        try:
            if self.subcommand == "benchmark":
                from anomalib_faprompt.pipelines import Benchmark  # noqa: PLC0415

                Benchmark().run(self.config["benchmark"])
                return
            if is_package_run(self.config.get(self.subcommand)):
                check_anomalib_data(getattr(self, "datamodule", None))
            original_run(self)
        except InputError as error:
            exit_with(error, f"anomalib {self.subcommand}")

    instantiate_classes.__doc__ = original_instantiate.__doc__
    run_subcommand.__doc__ = original_run.__doc__
    with patching("the changes to anomalib's command line") as patch:
        if patch is not None:
            patch.set(cli_class, "init_parser", staticmethod(init_parser))
            patch.set(cli_class, "instantiate_classes", instantiate_classes)
            patch.set(cli_class, "_run_subcommand", run_subcommand)
