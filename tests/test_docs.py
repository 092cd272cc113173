"""The README stays a short front door, and every relative link in it and in docs/ resolves."""
import builtins
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_MAX_LINES = 300
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]

# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def relative_links(text):
    """Link targets that name a file in the repository (no scheme, not a bare anchor), without
    their anchor; links shown inside code are not links."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    out = []
    for target in LINK.findall(text):
        if EXTERNAL.match(target) or target.startswith("#"):
            continue
        out.append(target.split("#", 1)[0])
    return out


def test_link_parser():
    text = ("see [a](docs/a.md#x), ![img](fig/p.png), [web](https://example.org/a.md), "
            "[here](#top), `[code](not/a/link.md)`\n```\n[block](no.md)\n```\n[t](b.md \"title\")")
    assert relative_links(text) == ["docs/a.md", "fig/p.png", "b.md"]


def test_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it under {README_MAX_LINES} and move detail to docs/"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files(page):
    links = relative_links(page.read_text())
    missing = [t for t in links if not (page.parent / t).exists()]
    assert not missing, f"{page.relative_to(REPO)}: links to missing files: {missing}"


# ----------------------------------------------------------------------------- code the docs cite
SRC = REPO / "src"
CODE_SPAN = re.compile(r"`([^`\n]+)`")
DOTTED = re.compile(r"^(rsna_pe(?:\.\w+)+)(?:\(\))?$")  # rsna_pe.core.labels.LABELS
CALL = re.compile(r"^(?:(\w+)\.)?(\w+)\((?:[^()]*)\)$")  # name(...) or module.name(...)
# Other packages' names the pages cite (their own docs are the reference for them).
LIBRARIES = {"np", "numpy", "torch", "timm", "pd", "pydicom", "cv2", "nn", "F", "wandb", "yaml",
             "json", "os", "sys", "math", "random", "albumentations", "A", "sklearn"}
LIBRARY_NAMES = {"StratifiedKFold"}
SOURCE_PATH = re.compile(r"^((?:src|tests|scripts|benchmarks|configs|docker|fig)/[\w./-]+\.\w+)$")


def _defined_names():
    """{module basename: names defined at its top level or in its classes}, and every name."""
    import ast
    per_module, every = {}, set()
    for p in SRC.rglob("*.py"):
        names = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        per_module.setdefault(p.stem, set()).update(names)
        every |= names
    return per_module, every


def _dotted_exists(dotted):
    """``rsna_pe.a.b.c``: a module path, then attributes defined in it (as text, no import)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = SRC.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[cut:]
            if not rest:
                return True
            text = module.read_text()
            return re.search(rf"^\s*(def|class)\s+{rest[0]}\b|^\s*{rest[0]}\s*[:=]|import .*\b{rest[0]}\b",
                             text, re.M) is not None
    return False


def cited_code_problems(text, per_module, every):
    """Names and files a page cites in code spans that the code does not have."""
    bad = []
    for span in CODE_SPAN.findall(FENCE.sub("", text)):
        span = span.strip()
        if m := DOTTED.match(span):
            if not _dotted_exists(m.group(1)):
                bad.append(span)
        elif m := CALL.match(span):
            module, name = m.groups()
            if module in LIBRARIES or name in LIBRARY_NAMES:
                continue
            known = per_module[module] if module in per_module else every
            if name not in known and not (module is None and name in dir(builtins)):
                bad.append(span)
        elif (m := SOURCE_PATH.match(span)) and "*" not in span and "<" not in span:
            if not (REPO / m.group(1)).exists():
                bad.append(span)
    return bad


def test_cited_code_checker_catches_drift():
    per_module, every = {"cnn": {"features"}}, {"features", "main"}
    text = ("`model.all_logits(x)`, `model.features(x)`, `cnn.features(x)`, `cnn.main()`, `main()`, "
            "`nothing_here()`, `len(x)`, `np.nothing()`, `src/nope.py`, `src/rsna_pe`")
    assert cited_code_problems(text, per_module, every) == [
        "model.all_logits(x)", "cnn.main()", "nothing_here()", "src/nope.py"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_cite_only_code_that_exists(page):
    per_module, every = _defined_names()
    bad = cited_code_problems(page.read_text(), per_module, every)
    assert not bad, f"{page.relative_to(REPO)} cites code that does not exist: {bad}"
