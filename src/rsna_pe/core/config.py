"""YAML configs: ``base:`` inheritance, typed ``key.sub=value`` overrides, saving.

A config file may name ``base: OTHER.yml`` or a list ``base: [A.yml, B.yml]`` (relative to
itself): the bases are merged in order, then its own keys over them. Each config set keeps the
facts every stage shares (the JPEG size) in one ``experiment.yml`` that all its stage configs
inherit. ``run_name`` defaults to the config file's stem. Overrides are cast to the type of the
value they replace, and an unknown key is an error: a typo must never train the wrong thing.

Bad configs stop with one line (rsna_pe.core.cli: exit 2): a ``base:`` that is not a file name or a
list of them, a loop of bases, YAML that does not parse (in a file or an override value), and
an empty or non-list value of a key in ``NON_EMPTY`` (the lists a run iterates over).
"""
import copy
import re
from pathlib import Path

import yaml

from .errors import ConfigError
from .io import atomic_write_text
from .paths import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "configs"
# Top-level lists a run iterates over (stage 7's model pairs and folds, a training's seed per
# fold): empty, a run would do nothing or fall back silently, so wherever a config holds one of
# these keys, in a file or from an override, it must be a non-empty list.
NON_EMPTY = ("models", "folds", "seeds")


def _merge(base, over):
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _bases(path, data):
    """The files ``base:`` names (a string or a list of strings, relative to ``path``)."""
    bases = data.pop("base", None)
    if bases in (None, "", []):
        return []
    names = [bases] if isinstance(bases, str) else bases
    if not isinstance(names, list) or not all(isinstance(b, str) and b for b in names):
        raise ConfigError(f"config {path}: key 'base' must be a file name or a list of file names, "
                          f"not {bases!r:.80}")
    return [Path(path).parent / b for b in names]


def _read(path, chain=()):
    """A config file merged over its bases; ``chain``: the files that led here (resolved), so
    a file that is its own base, directly or through others, stops instead of recursing."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config not found: {path}")
    here = path.resolve()
    if here in chain:
        loop = " -> ".join(p.name for p in (*chain[chain.index(here):], here))
        raise ConfigError(f"config {path}: its bases loop ({loop})")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"bad YAML in {path}: {str(e).splitlines()[0]}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {type(e).__name__}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping")
    merged = {}
    for base in _bases(path, data):
        merged = _merge(merged, _read(base, (*chain, here)))
    return _merge(merged, data)


def _cast(key, text, old):
    try:
        new = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if isinstance(old, str):  # a string key takes the text as it is
            return text
        raise ConfigError(f"override {key}={text}: not a YAML value "
                          f"({str(e).splitlines()[0]})") from None
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
    elif isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
    elif isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        try:  # YAML 1.1 reads "3e-3" (no dot) as a string
            return float(text)
        except ValueError:
            pass
    elif isinstance(old, str):
        return text
    elif isinstance(old, (list, dict)):
        if isinstance(new, type(old)):
            return new
    raise ConfigError(f"override {key}={text}: expected {type(old).__name__}")


def apply_overrides(cfg, overrides):
    """Apply ``a.b=value`` strings in place; each key must already exist in ``cfg``."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not key=value")
        key, text = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"unknown config key '{key}'")
            node = node[p]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key '{key}'")
        node[parts[-1]] = _cast(key, text, node[parts[-1]])
    return cfg


def load_config(path, overrides=()):
    """Read ``path`` (with its bases), set ``run_name`` from its stem, apply overrides."""
    cfg = _read(path)
    cfg.setdefault("run_name", Path(path).stem)
    cfg["config_file"] = str(path)
    return check_lists(apply_overrides(cfg, overrides), path)


def check_lists(cfg, path):
    """``cfg`` if each key of ``NON_EMPTY`` it holds is a non-empty list (see NON_EMPTY)."""
    for key in NON_EMPTY:
        if key in cfg and not (isinstance(cfg[key], list) and cfg[key]):
            raise ConfigError(f"config {path}: key '{key}' must be a non-empty list, "
                              f"not {cfg[key]!r:.80} (a run needs at least one)")
    return cfg


def default_config(name):
    """Path of a stage's natural config in the repo (``configs/<name>``), from any folder."""
    return CONFIG_DIR / name


def save_config(cfg, path):
    atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=False))


# ----------------------------------------------------------------------------- help text
_KEY = re.compile(r"^(\s*)([A-Za-z_][\w.-]*):(?:\s+(.*?))?\s*(?:#\s?(.*))?$")


def _comments(path, out=None):
    """{dotted key: comment} of a config file and its bases (the most derived comment wins);
    a comment-only line right under a key, indented deeper, continues that key's comment."""
    out = {} if out is None else out
    text = Path(path).read_text()
    for base in _bases(path, yaml.safe_load(text) or {}):
        _comments(base, out)
    stack, last = [], None  # stack of (indent, key)
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("#"):
            if last and indent > last[0] and out.get(last[1]):
                out[last[1]] += " " + stripped.lstrip("# ").strip()
            continue
        m = _KEY.match(line)
        if not m or m.group(2) == "base":
            last = None
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        key = ".".join(k for _, k in stack)
        if m.group(4):
            out[key] = m.group(4).strip()
        last = (indent, key) if m.group(4) else None
    return out


def describe(path):
    """Every key of a config (bases merged) with its value and its YAML comment, one per line:
    what a stage's ``-h`` prints, so an option is found without opening the file."""
    cfg = _read(path)
    notes = _comments(path)
    lines = []

    def walk(node, prefix):
        for k, v in node.items():
            key = f"{prefix}{k}"
            note = f"  # {notes[key]}" if notes.get(key) else ""
            if isinstance(v, dict) and v:
                lines.append(f"  {key}:{note}")
                walk(v, key + ".")
            else:
                lines.append(f"  {key}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}{note}")
    walk(cfg, "")
    return "\n".join(lines)
