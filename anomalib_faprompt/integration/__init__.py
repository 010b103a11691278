"""Everything of this package that touches anomalib's internals, in one place (the table: docs/anomalib-integration.md).

- :mod:`.hook`: the start-up hook (standard library only) that runs the others when anomalib's modules load;
  ``ANOMALIB_FAPROMPT_NO_HOOK=1`` switches it all off.
- :mod:`.publish`: ``FAPrompt`` and ``AnomalyCLIP`` as attributes of ``anomalib.models``.
- :mod:`.cli`: the command line of this package's models: seeded, one-line errors, quiet; the zero-shot benchmark.
- :mod:`.quiet`: the specific, known-harmless upstream messages the package's commands silence.
- :mod:`.workspace`: ``Engine`` run folders that replace nothing; zero-shot ``test``/``predict`` without validation.

Each patch is set once, when its anomalib module loads, and is guarded by :mod:`.patching` (a supported anomalib
version; all or nothing). The models never import this package.
"""
