"""The house rules: no module in src/ over 450 lines, no function over 60, and the package's
subpackages import only downwards in the order docs/architecture.md gives (no circle)."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_MODULE, MAX_FUNCTION = 450, 60


def _modules():
    return sorted(SRC.rglob("*.py"))


def test_no_module_over_the_limit():
    long = {str(p.relative_to(SRC)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE}
    assert not long, f"modules over {MAX_MODULE} lines: {long}"


def test_no_function_over_the_limit():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                first = min([node.lineno] + [d.lineno for d in node.decorator_list])
                n = node.end_lineno - first + 1
                if n > MAX_FUNCTION:
                    long[f"{p.relative_to(SRC)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION} lines: {long}"


# ----------------------------------------------------------------------------- import order
PACKAGE = SRC / "rsna_pe"
# A subpackage may import from itself and from those before it (docs/architecture.md).
LAYERS = ["core", "metric", "records", "data", "synthetic", "models", "train", "infer", "viz", "validation", "serve"]
SAME_FLOOR = {("viz", "validation"), ("validation", "viz")}


def _imports(path, root=SRC):
    """(line, absolute rsna_pe module or package) of every import in a package file, lazy ones
    included."""
    parts = path.relative_to(root).with_suffix("").parts
    package = parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            found.append((node.lineno, ".".join(base + ((node.module,) if node.module else ()))))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rsna_pe"):
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("rsna_pe")]
    return found


def upward_imports(root=SRC):
    """'file:line imports X' for each import of a later subpackage than the file's own."""
    bad = []
    for p in sorted((root / "rsna_pe").rglob("*.py")):
        parts = p.relative_to(root).parts
        if len(parts) < 3:
            continue  # rsna_pe/__init__.py
        own = parts[1]
        for line, target in _imports(p, root):
            sub = target.split(".")[1] if target.count(".") else None
            if sub is None or sub == own or (own, sub) in SAME_FLOOR:
                continue
            if sub not in LAYERS or own not in LAYERS or LAYERS.index(sub) > LAYERS.index(own):
                bad.append(f"{p.relative_to(root)}:{line} imports {target}")
    return bad


def test_every_subpackage_has_its_place():
    subs = sorted(d.name for d in PACKAGE.iterdir() if (d / "__init__.py").is_file())
    assert subs == sorted(LAYERS)
    assert not [p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"], "modules belong in a subpackage"


def test_subpackages_import_only_downwards():
    assert not upward_imports(), upward_imports()


def test_the_import_order_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "rsna_pe" / "core" / "x.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from ..infer import ensemble\nfrom . import labels\n")
    assert upward_imports(tmp_path) == ["rsna_pe/core/x.py:1 imports rsna_pe.infer"]
