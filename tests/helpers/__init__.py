"""Helpers shared by the tests: fake experiments (``fakes``) and tiny-model wrappers (``models``).

Imported as ``tests.helpers.*``: ``tests/__init__.py`` makes ``tests`` a package, so
pytest puts the repository root on ``sys.path`` when it loads ``tests/conftest.py``.
"""
