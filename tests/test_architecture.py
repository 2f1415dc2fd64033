"""The package's layer rules and size limits (docs/architecture.md), checked on the source with ``ast``.

Nothing is imported: each module is parsed, and its imports are resolved to absolute module names."""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "distil_whisper_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_FUNCTION_LINES = 80  # a function must be shorter than this
MAX_MODULE_LINES = 500  # a module must be shorter than this
# Optional or slow-to-import packages that may be imported inside the function that needs them.
LAZY_IMPORTS_ALLOWED = {
    "torch",
    "safetensors.torch",  # imports torch
    "whisper",
    "pywhispercpp",
    "ctranslate2",
    "faster_whisper",
    "matplotlib",
    "tensorboardX",
    "transformers",
}
TRAINING_OR_DATA = ("train", "distill", "data", "pseudo_label", "checkpoint")


@dataclass(frozen=True)
class Import:
    module: str  # absolute, e.g. "distil_whisper_jax.convert.hf" or "numpy"
    line: int
    in_function: bool
    in_main_block: bool  # inside `if __name__ == "__main__":`


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
        and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in node.test.comparators)
    )


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> list[str]:
    """Absolute names of what ``from X import a, b`` imports (``X.a`` when ``a`` may be a submodule)."""
    if node.level:
        base = current.split(".") if is_package else current.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    if prefix.startswith(PACKAGE):
        return [f"{prefix}.{a.name}" for a in node.names]  # a name may be a submodule: check both readings
    return [prefix]


def imports(path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    current, is_package = module_name(path), path.name == "__init__.py"
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, in_main: bool) -> None:
        for child in ast.iter_child_nodes(node):
            func = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            main = in_main or _is_main_guard(child)
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, in_function, in_main) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                found.extend(
                    Import(m, child.lineno, in_function, in_main) for m in _resolve(child, current, is_package)
                )
            visit(child, func, main)

    visit(tree, False, False)
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def is_within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


def test_library_never_imports_the_cli_layer():
    bad = [
        f"{rel(p)}:{i.line} imports {i.module}"
        for p in package_files()
        if not is_within(module_name(p), f"{PACKAGE}.cli") and p.name != "__main__.py"
        for i in imports(p)
        if is_within(i.module, f"{PACKAGE}.cli") and not i.in_main_block
    ]
    assert not bad, "library modules import the CLI layer (only `if __name__ == '__main__':` may):\n" + "\n".join(bad)


def test_model_imports_nothing_of_the_package():
    bad = [f"model.py:{i.line} imports {i.module}" for i in imports(ROOT / "model.py") if top(i.module) == PACKAGE]
    assert not bad, "\n".join(bad)


def test_losses_imports_only_jax_numpy_and_stdlib():
    allowed = {"jax", "numpy", "__future__"} | set(sys.stdlib_module_names)
    bad = [
        f"losses.py:{i.line} imports {i.module}" for i in imports(ROOT / "losses.py") if top(i.module) not in allowed
    ]
    assert not bad, "\n".join(bad)


def test_convert_knows_models_and_formats_not_training_or_data():
    forbidden = tuple(f"{PACKAGE}.{m}" for m in TRAINING_OR_DATA)
    bad = [
        f"{rel(p)}:{i.line} imports {i.module}"
        for p in sorted((ROOT / "convert").rglob("*.py"))
        for i in imports(p)
        if i.module.startswith(forbidden)
    ]
    assert not bad, "\n".join(bad)


def test_imports_at_the_top_of_each_module():
    bad = [
        f"{rel(p)}:{i.line} imports {i.module} inside a function"
        for p in package_files()
        for i in imports(p)
        if i.in_function and top(i.module) not in LAZY_IMPORTS_ALLOWED and i.module not in LAZY_IMPORTS_ALLOWED
    ]
    assert not bad, "imports belong at the top of the module (optional heavy packages excepted):\n" + "\n".join(bad)


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from `def` to the end of the body) of every function and method."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def test_functions_are_short():
    bad = [
        f"{rel(p)}: {name} has {n} lines"
        for p in package_files()
        for name, n in function_lengths(p)
        if n >= MAX_FUNCTION_LINES
    ]
    assert not bad, f"functions must be under {MAX_FUNCTION_LINES} lines:\n" + "\n".join(bad)


def test_modules_are_small():
    bad = [
        f"{rel(p)} has {n} lines"
        for p in package_files()
        if (n := len(p.read_text(encoding="utf-8").splitlines())) >= MAX_MODULE_LINES
    ]
    assert not bad, f"modules must be under {MAX_MODULE_LINES} lines:\n" + "\n".join(bad)


# The checks themselves, on small sources: each rule must be able to fail.


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    (root / "cli").mkdir(parents=True)
    (root / "convert").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)

    def write(relpath: str, text: str) -> Path:
        p = root / relpath
        p.write_text(text)
        return p

    return write


def test_import_resolution_and_scopes(fake_package):
    p = fake_package(
        "convert/hf.py",
        "from .. import train_data\nfrom ..model import Whisper\nimport numpy as np\n"
        "def f():\n    import torch\n    from . import ggml\n"
        "if __name__ == '__main__':\n    from ..cli.export import main\n",
    )
    got = {(i.module, i.in_function, i.in_main_block) for i in imports(p)}
    assert got == {
        (f"{PACKAGE}.train_data", False, False),
        (f"{PACKAGE}.model.Whisper", False, False),
        ("numpy", False, False),
        ("torch", True, False),
        (f"{PACKAGE}.convert.ggml", True, False),
        (f"{PACKAGE}.cli.export.main", False, True),
    }
    init = fake_package("convert/__init__.py", "from . import hf\nfrom .hf import x\n")
    assert {i.module for i in imports(init)} == {f"{PACKAGE}.convert.hf", f"{PACKAGE}.convert.hf.x"}


def test_the_rules_catch_violations(fake_package):
    fake_package("model.py", "from .utils import atomic_write\n")
    fake_package("losses.py", "import optax\nimport jax\n")
    fake_package("convert/ct2.py", "from ..checkpoint import restore\n")
    fake_package("transcribe.py", "from .cli import transcribe\n")
    fake_package("export.py", "def f():\n    import json\n" + "    x = 1\n" * 80)
    fake_package("big.py", "x = 1\n" * 500)
    for rule in (
        test_model_imports_nothing_of_the_package,
        test_losses_imports_only_jax_numpy_and_stdlib,
        test_convert_knows_models_and_formats_not_training_or_data,
        test_library_never_imports_the_cli_layer,
        test_imports_at_the_top_of_each_module,
        test_functions_are_short,
        test_modules_are_small,
    ):
        with pytest.raises(AssertionError):
            rule()


def test_console_scripts_are_cli_mains():
    """Every installed command is ``distil_whisper_jax.cli.<module>:main`` and that module defines ``main``."""
    pyproject = (ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")
    section = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = dict(
        (name.strip(), target.strip().strip('"'))
        for name, target in (ln.split("=", 1) for ln in section.split("\n") if "=" in ln)
    )
    assert len(scripts) >= 6, scripts
    bad = []
    for name, target in scripts.items():
        module, _, func = target.partition(":")
        path = ROOT.parent / (module.replace(".", "/") + ".py")
        if not module.startswith(f"{PACKAGE}.cli.") or func != "main" or not path.is_file():
            bad.append(f"{name} = {target}")
            continue
        defined = {n.name for n in ast.parse(path.read_text(encoding="utf-8")).body if isinstance(n, ast.FunctionDef)}
        if "main" not in defined:
            bad.append(f"{name} = {target}: {rel(path)} defines no main()")
    assert not bad, "console scripts must point at cli/<module>.py:main:\n" + "\n".join(bad)
