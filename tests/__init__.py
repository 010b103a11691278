"""The tests of anomalib-faprompt: ``unit/``, ``integration/``, ``helpers/`` (layout and markers: conftest.py)."""
