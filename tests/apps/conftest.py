"""The app tests (bench, train and stream CLIs): every test here is marked
slow and needs the app extras (the `test` extra installs them); the kernel
suite in tests/ runs without them. Puts tests/apps/ on sys.path for the
shared data_helpers.py (tests/apps is not a package)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/apps/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
