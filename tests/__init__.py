"""The tests of anomalib-faprompt, laid out as anomalib's: ``unit/``, ``integration/``, ``helpers/``.

``unit/`` holds the fast tests (no subprocess, no export, no training through anomalib's Engine, each within about
two seconds); ``integration/`` the slow ones, every one of them marked ``slow`` by ``integration/conftest.py``, so
that ``python -m pytest -m "not slow"`` runs the unit tests alone. ``conftest.py`` holds the shared fixtures;
``helpers/`` the functions and constants the tests import.
"""
