"""Loads the compiled extension seqcls_fast._C, refusing one that was built
against another torch: its C++ ABI would not match, and the failure would
otherwise be an undefined-symbol error (or a crash) far from its cause.

setup.py records what it built in _build_info.json next to the extension.
"""
import importlib
import importlib.util
import json
import os

import torch

REBUILD = "rebuild it: `pip install --no-build-isolation --no-deps -e .` in the source tree"


class ExtensionBuildMismatch(ImportError):
    """The extension on disk does not belong to the torch in use."""


def build_record_path():
    """Where setup.py wrote the build record, or None if no extension is found."""
    spec = importlib.util.find_spec("seqcls_fast._C")
    if spec is None or spec.origin is None:
        return None
    return os.path.join(os.path.dirname(spec.origin), "_build_info.json")


def read_build_record():
    """The build record as a dict, or None if there is none (a build made by
    something other than setup.py)."""
    path = build_record_path()
    if path is None or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def check_build_record(record, torch_version=None, torch_cuda=None):
    """Raises ExtensionBuildMismatch if `record` names another torch (version
    or CUDA version) than the one given (default: the one imported)."""
    torch_version = torch.__version__ if torch_version is None else torch_version
    torch_cuda = torch.version.cuda if torch_cuda is None else torch_cuda
    built = (record.get("torch"), record.get("torch_cuda"))
    if built != (str(torch_version), torch_cuda):
        raise ExtensionBuildMismatch(
            f"seqcls_fast._C was built against torch {built[0]} (CUDA {built[1]}), but torch "
            f"{torch_version} (CUDA {torch_cuda}) is installed: {REBUILD}")


def load_extension():
    """Imports seqcls_fast._C after checking its build record."""
    if importlib.util.find_spec("seqcls_fast._C") is None:
        raise ImportError(f"seqcls_fast._C is not built: {REBUILD}")
    record = read_build_record()
    if record is not None:
        check_build_record(record)
    try:
        return importlib.import_module("seqcls_fast._C")
    except ImportError as error:  # e.g. an unrecorded build against another torch
        if "undefined symbol" in str(error):
            raise ExtensionBuildMismatch(
                f"seqcls_fast._C does not match torch {torch.__version__} ({error}): "
                f"{REBUILD}") from error
        raise
