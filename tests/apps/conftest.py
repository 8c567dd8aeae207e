"""The app tests (bench and train CLIs): every test here is marked slow and
needs the app extras (the `test` extra installs them); the kernel suite in
tests/ runs without them."""
import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/tests/apps/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.slow)
