"""anomalib's command line with this package's models: seeded, quiet, one-line errors, the zero-shot benchmark.

For a run whose ``--model`` or ``--data`` is one of this package's classes (any other run is anomalib's): an integer
``--seed_everything`` is applied as Lightning's CLI does (anomalib 2.7 never applies it); a constructor's error,
a value jsonargparse cannot parse, an unwritable ``--default_root_dir`` or an
:class:`~anomalib_faprompt.errors.InputError` is the last line (exit 2); the messages of :mod:`.quiet` are
filtered; anomalib's MVTecAD or Visa data not under ``root`` is refused before anomalib downloads into it.
``anomalib benchmark`` runs :class:`anomalib_faprompt.pipelines.Benchmark` (a config of anomalib's models alone
runs as in anomalib).
"""

from __future__ import annotations

import functools
import re
import sys
from typing import Any

from anomalib_faprompt.errors import InputError, exit_with
from anomalib_faprompt.integration.patching import patching
from anomalib_faprompt.integration.quiet import quiet_command
from anomalib_faprompt.names import MODEL_NAMES
from anomalib_faprompt.runs import check_writable

SEEDED_SUBCOMMANDS = {"fit", "validate", "test", "train", "predict", "export"}
_PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
_CLASS_PATH = re.compile(r"class_path[= ]'(anomalib_faprompt\.[\w.]+)'")


def is_package_run(config: Any) -> bool:  # noqa: ANN401
    """Whether a subcommand's config builds one of this package's models or datamodules."""
    values = [config.get(key) for key in ("model", "data")] if hasattr(config, "get") else []
    paths = [value.get("class_path") if hasattr(value, "get") else value for value in values]
    return any(isinstance(p, str) and (p.startswith("anomalib_faprompt.") or p in MODEL_NAMES) for p in paths)


def apply_seed(subcommand: str, config: Any) -> int | None:  # noqa: ANN401
    """Apply an integer ``seed_everything`` of a Lightning subcommand's config; return it."""
    seed = config.get("seed_everything") if subcommand in SEEDED_SUBCOMMANDS else None
    if isinstance(seed, bool) or not isinstance(seed, int):
        return None
    from lightning.pytorch import seed_everything  # noqa: PLC0415  (Lightning loads with the subcommand)

    return seed_everything(seed, workers=True)


def package_error(message: str) -> str | None:
    """One line: the constructor's error, or the ``Parser key`` and what it expected, of a jsonargparse message."""
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
        text += " Pass a finite number." if "Expected a <class 'float'>" in text else ""  # nan and inf are refused
        return f"--{'.'.join(keys)}: {text}" if len(keys) > 1 else text
    return None


def patch_cli(module: Any) -> None:  # noqa: ANN401
    """Apply the changes above to ``anomalib.cli.cli.AnomalibCLI``, once."""
    cli_class = module.AnomalibCLI
    original_init_parser = cli_class.init_parser
    original_instantiate, original_run = cli_class.instantiate_classes, cli_class._run_subcommand  # noqa: SLF001

    @functools.wraps(original_init_parser)
    def init_parser(**kwargs: Any) -> Any:  # noqa: ANN401
        parser = original_init_parser(**kwargs)
        error = parser.error

        def one_line_error(message: str, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
            line = package_error(str(message))
            if line is None:
                error(message, *args, **kwargs)
            print(f"anomalib: {line}", file=sys.stderr)  # noqa: T201
            raise SystemExit(2)

        parser.error = one_line_error  # a parse error about this package's classes in one line
        return parser

    @functools.wraps(original_instantiate)
    def instantiate_classes(self: Any) -> None:  # noqa: ANN401
        subcommand = self.config["subcommand"]
        if not is_package_run(self.config.get(subcommand)):
            original_instantiate(self)
            return
        results = self.config[subcommand].get("default_root_dir")
        try:
            if results is not None:
                check_writable(results, "--default_root_dir")
        except InputError as error:
            exit_with(error, f"anomalib {subcommand}")
        apply_seed(subcommand, self.config[subcommand])
        quiet_command(subcommand)
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

    @functools.wraps(original_run)
    def run_subcommand(self: Any) -> None:  # noqa: ANN401
        from anomalib_faprompt.data.sources import check_anomalib_datamodule  # noqa: PLC0415

        try:
            if self.subcommand == "benchmark":
                from anomalib_faprompt.pipelines import Benchmark, checks  # noqa: PLC0415

                pipeline, args = Benchmark(), self.config["benchmark"]
                if checks.names_package_models(pipeline._get_args(args)):  # noqa: SLF001
                    quiet_command("benchmark")
                pipeline.run(args)
                return
            if is_package_run(self.config.get(self.subcommand)):
                check_anomalib_datamodule(getattr(self, "datamodule", None))
            original_run(self)
        except InputError as error:
            exit_with(error, f"anomalib {self.subcommand}")

    with patching("the changes to anomalib's command line") as patch:
        if patch is not None:
            patch.set(cli_class, "init_parser", staticmethod(init_parser))
            patch.set(cli_class, "instantiate_classes", instantiate_classes)
            patch.set(cli_class, "_run_subcommand", run_subcommand)
