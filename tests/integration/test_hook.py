"""The anomalib integration: start-up hook, publishing, the switch (anomalib's models run as with it off), patches.

Import order matters here, so each case runs in a fresh interpreter (which runs the installed start-up hook).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.commands import REPO, anomalib_cli, subprocess_env

TINY = (
    "dict(pretrained=None, image_size=32, vv_layers=1, prompt_depth=2, backbone_config={'embed_dim': 16, "
    "'vision_cfg': {'image_size': 32, 'layers': 2, 'width': 32, 'patch_size': 8, 'head_width': 16}, "
    "'text_cfg': {'context_length': 77, 'vocab_size': 49408, 'width': 16, 'heads': 1, 'layers': 2}})"
)
# What a process sees of the integration, printed as JSON; where the hook is on, the models each name builds.
STATE = (
    "import inspect, json, sys, anomalib.models as m, anomalib.engine as e; "
    "on = hasattr(m, 'FAPrompt'); "
    f"names = ['FAPrompt', 'fa_prompt', {{'class_path': 'FAPrompt'}}, 'anomaly_clip', "
    "{'class_path': 'anomalib.models.AnomalyCLIP'}]; "
    "print(json.dumps({'published': [hasattr(m, n) for n in ('FAPrompt', 'AnomalyCLIP')], "
    "'listed': sorted(n for n in m.list_models('pascal') if n in ('FAPrompt', 'AnomalyCLIP', "
    "'PromptLearningModule')), 'engine': hasattr(e.Engine.fit, '__wrapped__'), "
    "'finder': any(type(f).__name__ == '_Finder' for f in sys.meta_path), "
    f"'built': [type(m.get_model(n, **{TINY})).__name__ for n in names] if on else [], "
    "'file': inspect.getfile(m.FAPrompt) if on else ''}))"
)
PUBLISHED = {
    "published": [True, True],
    "listed": ["AnomalyCLIP", "FAPrompt"],
    "engine": True,  # Engine.fit wrapped once
    "finder": True,  # still waiting for anomalib's CLI module
    "built": ["FAPrompt", "FAPrompt", "FAPrompt", "AnomalyCLIP", "AnomalyCLIP"],
}
IMPORT_WARNINGS = ("Importing from timm.models.layers is deprecated", "anomalib.models.components.dinov2 package")


def _run(code: str, **env: str) -> tuple[str, str]:
    """Run ``code`` in a fresh interpreter (this checkout's package first on the path): its last line and stderr."""
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(**env),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1], result.stderr


def test_startup_imports_nothing_heavy():
    loaded = json.loads(
        _run(
            "import json, sys; print(json.dumps({name: name in sys.modules for name in "
            "('anomalib_faprompt.integration.hook', 'anomalib_faprompt.models', 'torch', 'anomalib', 'typing')}))",
        )[0],
    )
    assert loaded == {
        "anomalib_faprompt.integration.hook": True,
        "anomalib_faprompt.models": False,
        "torch": False,
        "anomalib": False,
        "typing": False,
    }


@pytest.mark.parametrize(
    ("first", "quiet"),
    [
        ("", False),  # anomalib.models first (a plain import: anomalib's warnings stay); it imports the models
        ("from anomalib_faprompt import FAPrompt; ", True),  # the package first: it imports anomalib.models
        ("import importlib.util; importlib.util.find_spec('anomalib.models'); ", False),  # a look-up first
        (("import importlib.util; importlib.util.find_spec('anomalib_faprompt.models'); "
          "import anomalib_faprompt.models; "), True),
        ("import anomalib_faprompt.components; ", False),  # the package's components import anomalib.models
    ],
)  # fmt: skip
def test_models_are_published_whatever_the_import_order(first, quiet):
    """Published, listed, built by every name anomalib looks up, from this checkout; its import warnings kept
    unless the package's models import anomalib.models; no warning of a patch that could not be applied."""
    line, stderr = _run(first + STATE)
    state = json.loads(line)
    assert Path(state.pop("file")).resolve().is_relative_to(REPO / "anomalib_faprompt")
    assert state == PUBLISHED
    assert [message in stderr for message in IMPORT_WARNINGS] == [not quiet] * 2
    assert "anomalib_faprompt:" not in stderr


def test_switch_turns_everything_off_for_a_plain_import():
    state = json.loads(
        _run("from anomalib_faprompt import FAPrompt; " + STATE, ANOMALIB_FAPROMPT_NO_HOOK="1")[0],
    )
    assert state == {
        "published": [False, False],
        "listed": ["AnomalyCLIP", "FAPrompt"],  # anomalib's own list_models: the shared base is a mixin, not listed
        "engine": False,
        "finder": False,
        "built": [],
        "file": "",
    }


def test_switch_skips_the_start_up_import():
    out, _ = _run("import sys; print('anomalib_faprompt' in sys.modules)", ANOMALIB_FAPROMPT_NO_HOOK="1")
    assert out == "False"


@pytest.mark.parametrize(
    ("model", "extra"),
    [
        ("Padim", ["--model.pre_trained", "false"]),
        ("WinClip", []),
    ],
)
def test_anomalib_models_run_as_with_the_hook_switched_off(model, extra, tmp_path):
    """``anomalib fit --seed_everything 5`` of anomalib's models: the same output with the hook and without it."""
    arguments = [
        "fit", "--model", model, *extra, "--data", "MVTecAD", "--data.root", tmp_path / "missing" / "MVTecAD",
        "--seed_everything", "5", "--trainer.max_epochs", "0", "--default_root_dir", tmp_path / "results",
    ]  # fmt: skip
    runs = [
        anomalib_cli(
            *arguments, cwd=tmp_path, returncode=None, env={"ANOMALIB_FAPROMPT_NO_HOOK": switch, "HF_HUB_OFFLINE": "1"}
        )
        for switch in ("0", "1")
    ]
    outputs = [_comparable(run.stdout + run.stderr, tmp_path) for run in runs]
    assert runs[0].returncode == runs[1].returncode
    assert outputs[0] == outputs[1]
    assert not any("Seed set to 5" in line for line in outputs[0])  # anomalib 2.7 never applies it
    assert any(model in line for line in outputs[0])


def _comparable(output: str, tmp_path: Path) -> list[str]:
    """The output's lines without times and addresses, nor the frames of a traceback (the wrappers' included)."""
    output = output.replace(str(tmp_path), "<tmp>")
    output = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+|\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\]", "", output)
    output = re.sub(r"0x[0-9a-f]+", "<address>", output)
    return [line.strip() for line in output.splitlines() if not line.startswith(("│", "╭", "╰"))]
