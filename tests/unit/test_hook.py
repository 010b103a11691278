"""The anomalib integration's patches in this process: a failing patch, an unsupported anomalib, quiet commands.

tests/integration/test_hook.py runs the start-up hook, publishing and the switch in fresh interpreters.
"""

from __future__ import annotations

import types
import warnings


def test_a_failing_patch_leaves_anomalib_as_it_was_with_one_warning():
    from anomalib_faprompt.integration.cli import patch_cli

    class Refusing(type):
        def __setattr__(cls, name, value):
            if name == "_run_subcommand":
                raise AttributeError(name)
            super().__setattr__(name, value)

    class CLI(metaclass=Refusing):
        @staticmethod
        def init_parser(**kwargs):
            return "anomalib's parser"

        def instantiate_classes(self):
            return "anomalib's instantiate_classes"

        def _run_subcommand(self):
            return "anomalib's run"

    fake = types.ModuleType("fake_cli_module")
    fake.AnomalibCLI = CLI
    before = dict(vars(CLI))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch_cli(fake)
    assert len(caught) == 1
    assert "command line not applied, anomalib left as it was" in str(caught[0].message)
    assert dict(vars(CLI)) == before
    assert CLI().instantiate_classes() == "anomalib's instantiate_classes"
    assert CLI.init_parser() == "anomalib's parser"


def test_an_unsupported_anomalib_version_is_not_patched(monkeypatch):
    import anomalib

    from anomalib_faprompt.integration import patching

    monkeypatch.setattr(anomalib, "__version__", "2.8.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with patching.patching("a fix") as patch:
            assert patch is None
    assert len(caught) == 1
    assert "written for anomalib >=2.7,<2.8, found 2.8.0" in str(caught[0].message)


def test_quiet_command_filters_only_the_listed_messages():
    from anomalib_faprompt.integration.quiet import quiet_command

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_command("test")
        warnings.warn("Found 78 module(s) in eval mode at the start of training. This may lead", stacklevel=1)
        warnings.warn("The dirpath has changed from 'a' to 'b', therefore ...", stacklevel=1)
        warnings.warn("Found 78 modules that matter", stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["Found 78 modules that matter"]
