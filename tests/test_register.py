"""The start-up hook: short model names in anomalib, nothing heavy imported at interpreter start-up."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    return result.stdout.strip().splitlines()[-1]


def test_startup_imports_nothing_heavy():
    loaded = json.loads(
        _run(
            "import json, sys; print(json.dumps({name: name in sys.modules for name in "
            "('anomalib_faprompt._register', 'anomalib_faprompt.models', 'torch', 'anomalib', 'typing')}))",
        ),
    )
    assert loaded == {
        "anomalib_faprompt._register": True,
        "anomalib_faprompt.models": False,
        "torch": False,
        "anomalib": False,
        "typing": False,
    }


def test_anomalib_models_publishes_the_plugin_models():
    out = _run(
        "import anomalib.models as m; from anomalib.models import get_model; "
        "print(m.FAPrompt.__module__, m.AnomalyCLIP.__module__, 'FAPrompt' in m.__all__, "
        "get_model('AnomalyCLIP', pretrained=None, backbone_config={'embed_dim': 16, 'vision_cfg': "
        "{'image_size': 32, 'layers': 2, 'width': 32, 'patch_size': 8, 'head_width': 16}, 'text_cfg': "
        "{'context_length': 77, 'vocab_size': 49408, 'width': 16, 'heads': 1, 'layers': 2}}, image_size=32, "
        "vv_layers=1, prompt_depth=2).__class__.__name__)",
    )
    assert out == (
        "anomalib_faprompt.models.faprompt.lightning_model anomalib_faprompt.models.anomalyclip.lightning_model "
        "True AnomalyCLIP"
    )


def test_hook_registers_when_anomalib_models_was_imported_first():
    # The finder stays (once) until anomalib's benchmark job module, its other target, is imported.
    out = _run(
        "import sys; import anomalib.models as m; "
        "from anomalib_faprompt import _register; "
        "finders = lambda: [type(f).__name__ for f in sys.meta_path].count('_Finder'); before = finders(); "
        "import anomalib.pipelines.benchmark.job as job; "
        "print(hasattr(m, 'FAPrompt'), before, finders(), job.Engine.__name__)",
    )
    assert out == "True 1 0 BenchmarkEngine"


def test_hook_can_be_switched_off():
    env = {**os.environ, "ANOMALIB_FAPROMPT_NO_HOOK": "1"}
    result = subprocess.run(
        [sys.executable, "-c", "import sys; print('anomalib_faprompt._register' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert result.stdout.strip() == "False"
