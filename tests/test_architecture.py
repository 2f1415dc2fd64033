"""The package's layer order and size rules (docs/architecture.md), checked on the source with ``ast``.

Nothing is imported: each module is parsed, and its imports (lazy ones included) are resolved to absolute
module names. The rules: imports only go down the layers below; no import cycles; only the thin top-level
entry points import ``cli``; the model imports nothing of the package; the losses are pure; the converters
know models and formats, never training or data; functions under 80 lines; modules at most 400 code lines."""

from __future__ import annotations

import ast
import io
import subprocess
import sys
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "distil_whisper_jax"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_FUNCTION_LINES = 80  # a function must be shorter than this
MAX_CODE_LINES = 400  # code lines of a module (blank, comment and docstring lines not counted)
# Bottom to top. A module may import its own folder and the layers below it, never a layer above.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("infra", "assets"),
    ("core",),
    ("speech",),
    ("weights",),
    ("data",),
    ("decode",),
    ("stages",),
    ("cli",),
    ("__main__", "transcribe", "export", "preflight"),  # the thin `python -m` entry points
)
THIN_ENTRY_POINTS = {"__main__", "transcribe", "export", "preflight"}
# Which stages a stage may use (the demo runs the others; a distillation can create its student).
STAGE_USES = {
    "demo": {"label", "distill", "evaluate", "export", "student"},
    "distill": {"student"},
    "label": set(),
    "evaluate": set(),
    "export": set(),
    "student": set(),
    "preflight": set(),
}
# Optional or slow-to-import packages that may be imported inside the function that needs them.
LAZY_IMPORTS_ALLOWED = {
    "torch",
    "safetensors.torch",  # imports torch
    "whisper",
    "pywhispercpp",
    "ctranslate2",
    "faster_whisper",
    "onnxruntime",  # the voice-activity model (speech/vad.py), only for --long_form vad
    "matplotlib",
    "tensorboardX",
    "transformers",
    "scipy.signal",  # ~0.4 s to import, only for resampling input that is not 16 kHz
}
# What a converter must never import: training, data and the stages.
NOT_FOR_CONVERTERS = ("core.train", "core.optim", "core.losses", "weights.checkpoint", "data", "decode", "stages")


@dataclass(frozen=True)
class Import:
    module: str  # absolute, e.g. "distil_whisper_jax.weights.convert.hf" or "numpy"
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


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in package_files()}


def target_module(name: str, modules: dict[str, Path]) -> str | None:
    """The package module an imported name belongs to (``a.b.f`` → ``a.b``), or None outside the package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def layer_of(module: str) -> int:
    """Index in LAYERS of the top-level folder (or entry module) ``module`` lives in."""
    first = module.split(".")[1] if module.count(".") else ""
    for i, names in enumerate(LAYERS):
        if first in names:
            return i
    raise AssertionError(f"{module}: in no layer of LAYERS (add its folder to the layer order)")


def import_edges() -> list[tuple[str, str, int]]:
    """(importer, imported package module, line) for every import of the package, lazy ones included."""
    modules = package_modules()
    edges = []
    for name, path in modules.items():
        for i in imports(path):
            target = target_module(i.module, modules)
            if target and target != name and target != PACKAGE:
                edges.append((name, target, i.line))
    return edges


def test_every_module_is_in_a_layer():
    bad = [m for m in package_modules() if m != PACKAGE and not _in_a_layer(m)]
    assert not bad, "modules outside the layer order:\n" + "\n".join(bad)


def _in_a_layer(module: str) -> bool:
    try:
        layer_of(module)
    except AssertionError:
        return False
    return True


def test_imports_only_go_down():
    bad = [
        f"{a}:{line} imports {b} (layer {LAYERS[layer_of(b)]} is above {LAYERS[layer_of(a)]})"
        for a, b, line in import_edges()
        if layer_of(b) > layer_of(a)
    ]
    assert not bad, "imports must go down the layers:\n" + "\n".join(bad)


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def test_stages_use_only_the_stages_they_run():
    bad = [
        f"{a}:{line} imports {b}"
        for a, b, line in import_edges()
        if _stage(a) and _stage(b) and _stage(a) != _stage(b) and _stage(b) not in STAGE_USES.get(_stage(a), set())
    ]
    assert not bad, f"a stage may use only the stages STAGE_USES names: {STAGE_USES}\n" + "\n".join(bad)


def test_every_stage_is_in_the_stage_table_and_exports_config_and_run():
    stages = sorted(p.name for p in (ROOT / "stages").iterdir() if (p / "__init__.py").is_file())
    assert set(stages) == set(STAGE_USES), (stages, sorted(STAGE_USES))
    for stage in stages:
        tree = ast.parse((ROOT / "stages" / stage / "__init__.py").read_text(encoding="utf-8"))
        exported = next(
            (
                ast.literal_eval(n.value)
                for n in tree.body
                if isinstance(n, ast.Assign) and n.targets[0].id == "__all__"
            ),
            [],
        )
        assert "run" in exported and any(e.endswith("Config") for e in exported), (stage, exported)


def find_cycle(edges: list[tuple[str, str, int]]) -> list[str] | None:
    """One import cycle of the graph (as a path that returns to its start), or None."""
    graph: dict[str, set[str]] = {}
    for a, b, _ in edges:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles():
    cycle = find_cycle(import_edges())
    assert cycle is None, "import cycle (lazy imports count): " + " → ".join(cycle or [])


def test_library_never_imports_the_cli_layer():
    bad = [
        f"{a}:{line} imports {b}"
        for a, b, line in import_edges()
        if is_within(b, f"{PACKAGE}.cli") and not is_within(a, f"{PACKAGE}.cli")
        if a.rpartition(".")[2] not in THIN_ENTRY_POINTS or a.count(".") != 1
    ]
    assert not bad, "only the thin entry points and cli/ itself import cli/:\n" + "\n".join(bad)


def test_top_level_holds_only_the_package_face_and_thin_entry_points():
    top_level = {p.stem for p in ROOT.glob("*.py")} - {"__init__"}
    assert top_level == THIN_ENTRY_POINTS, sorted(top_level ^ THIN_ENTRY_POINTS)
    for name in THIN_ENTRY_POINTS:
        found = {i.module for i in imports(ROOT / f"{name}.py")}
        assert found <= {"sys", f"{PACKAGE}.cli.{name if name != '__main__' else 'demo'}.main"}, (name, found)


# Modules another process runs by name (``python -m``) that are neither an entry point nor a command.
RUN_BY_NAME = {f"{PACKAGE}.stages.export.runtimes"}  # the export runtimes, in their verification subprocess


def test_every_runnable_module_runs_a_command():
    """A ``__main__`` block only where ``python -m`` runs a command: cli/, the entry points, RUN_BY_NAME."""
    bad = [
        rel(path)
        for name, path in package_modules().items()
        if any(_is_main_guard(n) for n in ast.parse(path.read_text(encoding="utf-8")).body)
        and not is_within(name, f"{PACKAGE}.cli")
        and name not in {f"{PACKAGE}.{e}" for e in THIN_ENTRY_POINTS} | RUN_BY_NAME
    ]
    assert not bad, "modules runnable with python -m that are not commands:\n" + "\n".join(bad)


def test_model_imports_nothing_of_the_package():
    path = ROOT / "core" / "model.py"
    bad = [f"core/model.py:{i.line} imports {i.module}" for i in imports(path) if top(i.module) == PACKAGE]
    assert not bad, "\n".join(bad)


def test_losses_imports_only_jax_numpy_and_stdlib():
    allowed = {"jax", "numpy", "__future__"} | set(sys.stdlib_module_names)
    path = ROOT / "core" / "losses.py"
    bad = [f"core/losses.py:{i.line} imports {i.module}" for i in imports(path) if top(i.module) not in allowed]
    assert not bad, "\n".join(bad)


def test_convert_knows_models_and_formats_not_training_or_data():
    forbidden = tuple(f"{PACKAGE}.{m}" for m in NOT_FOR_CONVERTERS)
    bad = [
        f"{rel(p)}:{i.line} imports {i.module}"
        for p in sorted((ROOT / "weights" / "convert").rglob("*.py"))
        for i in imports(p)
        if any(is_within(i.module, f) for f in forbidden)
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


def test_transcribing_starts_without_torch_or_scipy_signal():
    """A command's start-up is part of every run's time (a warm whole-process run of a short file is mostly
    start-up): transcription imports neither PyTorch (~1 s, via transformers' feature extractor) nor
    scipy.signal (~0.4 s); each is imported where it is needed."""
    code = "import sys, distil_whisper_jax.cli.transcribe; print(sorted({'torch', 'scipy.signal'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def function_lengths(path: Path) -> list[tuple[str, int]]:
    """(qualified name, lines from `def` to the end of the body) of every function and method, its docstring
    not counted: explaining a function must never cost it room, or docstrings get squeezed."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, int]] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = child.end_lineno - child.lineno + 1
                first = child.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    lines -= first.end_lineno - first.lineno + 1 if isinstance(first.value.value, str) else 0
                out.append((prefix + child.name, lines))
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


def code_lines(path: Path) -> int:
    """Lines holding code: blank, comment-only and docstring lines are not counted."""
    text = path.read_text(encoding="utf-8")
    lines = {
        n
        for tok in tokenize.generate_tokens(io.StringIO(text).readline)
        if tok.type
        not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
        for n in range(tok.start[0], tok.end[0] + 1)
    }
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines -= set(range(first.lineno, first.end_lineno + 1))
    return len(lines)


def test_modules_are_small():
    bad = [f"{rel(p)} has {n} code lines" for p in package_files() if (n := code_lines(p)) > MAX_CODE_LINES]
    assert not bad, f"modules must have at most {MAX_CODE_LINES} code lines:\n" + "\n".join(bad)


# The checks themselves, on small sources: each rule must be able to fail.


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    root = tmp_path / PACKAGE
    monkeypatch.setattr(sys.modules[__name__], "ROOT", root)

    def write(relpath: str, text: str) -> Path:
        p = root / relpath
        for parent in reversed(p.relative_to(root).parents):
            (root / parent).mkdir(exist_ok=True)
            (root / parent / "__init__.py").touch()
        p.write_text(text)
        return p

    return write


def test_import_resolution_and_scopes(fake_package):
    p = fake_package(
        "weights/convert/hf.py",
        "from ... import data\nfrom ...core.model import Whisper\nimport numpy as np\n"
        "def f():\n    import torch\n    from . import ggml\n"
        "if __name__ == '__main__':\n    from ...cli.export import main\n",
    )
    got = {(i.module, i.in_function, i.in_main_block) for i in imports(p)}
    assert got == {
        (f"{PACKAGE}.data", False, False),
        (f"{PACKAGE}.core.model.Whisper", False, False),
        ("numpy", False, False),
        ("torch", True, False),
        (f"{PACKAGE}.weights.convert.ggml", True, False),
        (f"{PACKAGE}.cli.export.main", False, True),
    }
    init = fake_package("weights/convert/__init__.py", "from . import hf\nfrom .hf import x\n")
    assert {i.module for i in imports(init)} == {f"{PACKAGE}.weights.convert.hf", f"{PACKAGE}.weights.convert.hf.x"}


VIOLATIONS = {
    test_imports_only_go_down: {"core/optim.py": "from distil_whisper_jax.data import stream\n", "data/stream.py": ""},
    test_no_import_cycles: {
        "speech/a.py": "from distil_whisper_jax.speech import b\n",
        "speech/b.py": "def f():\n    from distil_whisper_jax.speech import a\n",
    },
    test_stages_use_only_the_stages_they_run: {
        "stages/export/export.py": "from distil_whisper_jax.stages.distill import run\n",
        "stages/distill/__init__.py": "run = None\n",
    },
    test_every_stage_is_in_the_stage_table_and_exports_config_and_run: {
        "stages/label/__init__.py": "__all__ = ['run']\n"
    },
    test_every_module_is_in_a_layer: {"utils/misc.py": ""},
    test_every_runnable_module_runs_a_command: {"decode/transcribe.py": "if __name__ == '__main__':\n    pass\n"},
    test_top_level_holds_only_the_package_face_and_thin_entry_points: {"utils.py": ""},
    test_model_imports_nothing_of_the_package: {"core/model.py": "from distil_whisper_jax.infra.files import write\n"},
    test_losses_imports_only_jax_numpy_and_stdlib: {"core/losses.py": "import optax\nimport jax\n"},
    test_convert_knows_models_and_formats_not_training_or_data: {
        "weights/convert/ct2.py": "from distil_whisper_jax.weights.checkpoint import restore\n"
    },
    test_library_never_imports_the_cli_layer: {
        "decode/transcribe.py": "from distil_whisper_jax.cli import transcribe\n"
    },
    test_imports_at_the_top_of_each_module: {"stages/export/export.py": "def f():\n    import json\n"},
    test_functions_are_short: {"stages/export/export.py": 'def f():\n    """Doc."""\n' + "    x = 1\n" * 79},
    test_modules_are_small: {"core/big.py": '"""Doc."""\n' + "# comment\n\n" * 300 + "x = 1\n" * 401},
}


@pytest.mark.parametrize("rule", list(VIOLATIONS), ids=lambda r: r.__name__)
def test_each_rule_catches_its_violation(fake_package, rule):
    fake_package("core/model.py", "import jax\n")
    fake_package("core/losses.py", "import jax\n")
    fake_package("cli/transcribe.py", "def main():\n    pass\n")
    for name in STAGE_USES:
        fake_package(f"stages/{name}/__init__.py", "__all__ = ['XConfig', 'run']\n")
    for name in THIN_ENTRY_POINTS:
        fake_package(f"{name}.py", "import sys\n")
    rule()  # the clean fake package passes
    for relpath, text in VIOLATIONS[rule].items():
        fake_package(relpath, text)
    with pytest.raises(AssertionError):
        rule()


def test_code_lines_leave_out_docstrings_comments_and_blank_lines(tmp_path):
    p = tmp_path / "m.py"
    p.write_text('"""Doc\n\nmore."""\n\n# c\nx = (\n    1,\n)\n\n\ndef f():\n    """Doc."""\n    return """a\nb"""\n')
    assert code_lines(p) == 3 + 1 + 2


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
