"""Keeps the package's import layering (STYLE.md, "Who may import whom") true."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lovt_keras"
BACKENDS = {"jax", "tensorflow", "torch"}

# subpackage -> top-level modules and lovt_keras subpackages it must not import
FORBIDDEN = {
    "layers": BACKENDS | {"gin", "lovt_keras.models", "lovt_keras.data", "lovt_keras.training"},
    "losses": BACKENDS | {"gin", "lovt_keras.models", "lovt_keras.data", "lovt_keras.training"},
    "metrics": BACKENDS | {"gin", "lovt_keras.models", "lovt_keras.data", "lovt_keras.training"},
    "models": BACKENDS | {"gin", "lovt_keras.data", "lovt_keras.training"},
    "data": BACKENDS | {"gin", "lovt_keras.models", "lovt_keras.training"},
    "training": BACKENDS | {"gin", "argparse"},
    "analysis": BACKENDS | {"gin", "argparse"},
}

# The one backend utility STYLE.md allows: torch's global generator drives the dropout
# of keras-hub layers on PyTorch, so exact resumes save and restore it.
ALLOWED = {
    "training/rng.py": {"torch"},
    # The distribution engines (STYLE.md: per-backend code only where Keras requires it).
    "training/distribution.py": {"jax", "tensorflow", "torch", "torch.distributed",
                                 "torch.distributed.nn.functional"},
}


def _imports(path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def _files():
    for sub in sorted(FORBIDDEN):
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            yield sub, path


@pytest.mark.parametrize("sub,path", list(_files()), ids=lambda x: str(x))
def test_layering(sub, path):
    bad = []
    allowed = ALLOWED.get(str(path.relative_to(PACKAGE)), set())
    for name in _imports(path):
        if name in allowed:
            continue
        for forbidden in FORBIDDEN[sub]:
            if name == forbidden or name.startswith(forbidden + "."):
                bad.append(name)
        if name == "tools" or name.startswith("tools."):
            bad.append(name)
    assert not bad, f"{path.relative_to(ROOT)} imports {bad} (see STYLE.md layering)"
