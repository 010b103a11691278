"""Everything of this package that touches anomalib's internals, in one place.

- :mod:`.hook`: the start-up hook (standard library only) that runs the others when anomalib's modules load;
  ``ANOMALIB_FAPROMPT_NO_HOOK=1`` switches it all off.
- :mod:`.publish`: ``FAPrompt`` and ``AnomalyCLIP`` on ``anomalib.models`` (short names for ``--model`` and
  ``get_model``; ``list_models``).
- :mod:`.benchmark`: fixes to anomalib's benchmark pipeline, active only while a benchmark job or pipeline runs.
- :mod:`.cli`: the command line: ``--seed_everything`` applied, the package's own errors shown last, quiet logs.
- :mod:`.quiet`: the specific, known-harmless upstream messages the package's commands silence.
- :mod:`.workspace`: run folders of ``test``/``predict`` from a checkpoint never replace a training run's files;
  no validation before ``test``/``predict`` of a model built with trained ``weights``.

Every patch is guarded by :mod:`.patching`: a supported anomalib version, and all-or-nothing (a failure leaves
anomalib as it was and gives one warning). The models never import this package.
"""
