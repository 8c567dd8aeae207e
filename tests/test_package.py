"""The package's shape: ``import seqcls_fast`` needs torch alone and loads no
app (seqcls_fast/apps/), the core never imports the apps, and
seqcls_fast.reference imports only the shared layout (a reference that reused the
modules it checks would share their mistakes)."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import seqcls_fast

PACKAGE = Path(seqcls_fast.__file__).resolve().parent
APPS = PACKAGE / "apps"

# Run in a fresh interpreter: a finder refuses every top-level module outside
# the standard library, seqcls_fast, and torch with the distributions torch
# declares it needs (numpy and tqdm, which torch imports when they are there,
# are optional to it and so refused too). torch is imported first; then
# seqcls_fast, recording any refused import issued from seqcls_fast's code.
IMPORT_WITH_TORCH_ALONE = r'''
import importlib.abc, importlib.metadata as md, json, re, sys

def normalized(dist):
    return re.sub(r"[-_.]+", "-", dist).lower()

def torch_and_its_requirements():
    """Distribution names: torch and, transitively, what it requires (extras aside)."""
    needed, todo = set(), ["torch"]
    while todo:
        dist = normalized(todo.pop())
        if dist in needed:
            continue
        needed.add(dist)
        try:
            requires = md.requires(dist) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.match(r"[A-Za-z0-9._-]+", r).group(0) for r in requires if "extra ==" not in r]
    return needed

needed = torch_and_its_requirements()
ALLOWED = set(sys.stdlib_module_names) | {"torch", "seqcls_fast"} | {
    module for module, dists in md.packages_distributions().items()
    if any(normalized(d) in needed for d in dists)}
refused = []

def importer():
    """The module whose code issued the import being resolved."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame is not None else "?"

class RefuseOutsideTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in ALLOWED or top.startswith("_sysconfigdata"):
            return None  # the ordinary finders look for it
        refused.append([name, importer()])
        raise ModuleNotFoundError(f"refused by tests/test_package.py: {name}", name=name)

sys.meta_path.insert(0, RefuseOutsideTorch())
import torch  # noqa: E402
before = len(refused)
import seqcls_fast  # noqa: E402
print(json.dumps({
    "refused_for_seqcls_fast": [r for r in refused[before:] if r[1].startswith("seqcls_fast")],
    "modules": sorted(sys.modules),
    "numpy_refused_to_torch": any(r[0] == "numpy" for r in refused[:before]),
}))
'''


def test_import_needs_torch_alone_and_loads_no_app(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE.parent) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", IMPORT_WITH_TORCH_ALONE], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["refused_for_seqcls_fast"] == []
    loaded = [m for m in report["modules"] if m.startswith("seqcls_fast")]
    assert "seqcls_fast.reference" in loaded and "seqcls_fast._C" in loaded
    assert not [m for m in loaded if m == "seqcls_fast.apps" or m.startswith("seqcls_fast.apps.")]
    assert "seqcls_fast.__main__" not in loaded


def _imported_modules(path):
    """Every module ``path`` imports anywhere (top level or inside functions),
    relative imports resolved against the package seqcls_fast."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module
            if node.level:  # relative: level - 1 packages up from this file's
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1] + ([module] if module else [])
                module = ".".join(parts)
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_the_core_never_imports_the_apps():
    """Not even lazily: only __main__.py (the command line's dispatcher) does."""
    core = [p for p in PACKAGE.glob("*.py") if p.name != "__main__.py"]
    assert len(core) >= 10
    for path in core:
        apps = [m for m in _imported_modules(path) if m.startswith("seqcls_fast.apps")]
        assert not apps, f"{path.name} imports {apps}"


def test_the_apps_live_in_one_package():
    assert sorted(p.name for p in APPS.iterdir() if not p.name.startswith("__")) == [
        "bench", "predict_cli.py", "stream_cli.py", "train"]
    assert not (PACKAGE / "bench").exists() and not (PACKAGE / "train").exists()


def test_reference_imports_only_the_shared_layout():
    """Of ours, reference.py imports layout.py alone, and layout.py imports
    nothing of ours: the references compute everything themselves."""
    path = PACKAGE / "reference.py"
    ours = {m.split(".")[1] for m in _imported_modules(path)
            if m.split(".")[0] == "seqcls_fast" and "." in m}
    assert ours == {"layout"}
    assert not [m for m in _imported_modules(PACKAGE / "layout.py")
                if m.split(".")[0] == "seqcls_fast"]
