"""The house limits: no module in src/ over 450 lines, no function over 60 (docs/ say why)."""
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
