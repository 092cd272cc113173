"""Reading a model bundle's files as data from a stranger: the manifest's structure, format and
version checked, each file read once (no symbolic links, no names with folders in them, no
ONNX or JSON file over its size cap) and its sha256 checked on the bytes that are then parsed. Light on purpose (no torch): the site files
(rsna_pe.infer.site_files) are read from a bundle through it. Building models from a bundle:
rsna_pe.infer.bundle."""
import hashlib
import os
import re
import stat
from pathlib import Path

from ..core.errors import PipelineError
from ..core.io import strict_loads
from ..core.labels import LABELS

FORMAT = "rsna-pe-model-bundle"
FORMAT_VERSION = 1
# A bundle that carries a calibration is version 2, so that code which reads only version 1
# (and would ignore the calibration) refuses it instead of predicting uncalibrated.
CALIBRATED_VERSION = 2
READ_VERSIONS = (FORMAT_VERSION, CALIBRATED_VERSION)
MANIFEST = "manifest.json"
CARD = "MODEL_CARD.md"
# metric.postprocess: the original solution's consistency rules (PIPELINE.md section 6).
POSTPROCESS = "rsna-str-pe-consistency-v1"


def sha256_hex(data):
    return hashlib.sha256(data).hexdigest()


KINDS = ("cnn", "rnn")
ONNX_SUFFIX = ".onnx"
# The most bytes a file of a suffix may hold, checked before it is read: more is damage or an
# attack (rexnet_200 as ONNX is 55 MB, a model's JSON a few kB). Weights are not capped.
MAX_BYTES = {ONNX_SUFFIX: 1 << 30, ".json": 64 << 20, ".md": 64 << 20}
_SHA256 = re.compile(r"[0-9a-f]{64}")
_JSON_TYPES = {dict: "a mapping", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def plain_name(name, where, key):
    """``name`` if it is a plain file name: a bundle's files sit in its folder, and a name with
    folders in it is refused, never cut to its last part."""
    if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
        raise PipelineError(f"{where}: key '{key}': {name!r:.80} is not a plain file name")
    return name


def key_of(obj, key, types, where):
    """``obj[key]`` for a dotted ``key`` (list items by number), checked to be of ``types`` (a
    bool is not an int here): damage stops with one line naming the file and the key."""
    node = obj
    for i, part in enumerate(key.split(".")):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            inside = "'" + ".".join(key.split(".")[:i]) + "'" if i else "the file"
            what = "" if isinstance(node, dict) else f" ({inside} is {_JSON_TYPES.get(type(node), 'not JSON')})"
            raise PipelineError(f"{where}: key '{key}' is missing{what}")
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(node, types) or (isinstance(node, bool) and bool not in types):
        want = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in types)
        raise PipelineError(f"{where}: key '{key}' is {_JSON_TYPES.get(type(node), type(node).__name__)}, "
                            f"expected {want}")
    return node


def _read_plain(path):
    """The bytes of ``path`` (None if absent), read once, if it is a regular file within its
    suffix's size cap: a symbolic link is refused, not followed, even one made after the folder
    was listed."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return None
    except OSError as e:
        if Path(path).is_symlink():
            raise PipelineError(f"{path}: a symbolic link; a bundle holds plain files only") from None
        raise PipelineError(f"{path}: cannot read ({e.strerror})") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise PipelineError(f"{path}: not a regular file")
    cap = MAX_BYTES.get(Path(path).suffix, -1)
    with os.fdopen(fd, "rb") as f:
        # past the cap nothing is read; cap + 1 bytes at most, in case the file grows meanwhile
        data = None if st.st_size > cap >= 0 else f.read(cap + 1 if cap >= 0 else -1)
    if data is None or len(data) > cap >= 0:
        raise PipelineError(f"{path}: larger than the {cap:,} bytes a bundle's {Path(path).suffix} file "
                            "may hold; refusing to read it")
    return data


def read_bundle(bundle, keep=None):
    """-> (manifest, {listed file name: its bytes}, sha256 of the manifest's bytes), after
    checking the manifest's structure, format and version and every listed file's sha256.
    Each file is read once: what is hashed is what is parsed and loaded. ``keep(name)``: whether
    a file's bytes are kept after their check (default: all)."""
    bundle = Path(bundle)
    links = sorted(p.name for p in bundle.iterdir() if p.is_symlink()) if bundle.is_dir() else []
    if links:
        raise PipelineError(f"{bundle / links[0]}: a symbolic link; a bundle holds plain files only")
    path = bundle / MANIFEST
    raw = _read_plain(path)
    if raw is None:
        raise PipelineError(f"{path}: not found ({bundle} is not a model bundle)")
    manifest = _check_manifest(strict_loads(raw, path), path)
    files = {}
    for name, digest in manifest["files"].items():
        data = _verified(bundle / name, digest)
        if keep is None or keep(name):
            files[name] = data
    return manifest, files, sha256_hex(raw)


def read_verified(bundle, name):
    """The bytes of the file ``name`` of a bundle if its manifest (checked) lists it and its
    sha256 matches, None if it is not listed; the other files are not read."""
    path = Path(bundle) / MANIFEST
    raw = _read_plain(path)
    if raw is None:
        raise PipelineError(f"{path}: not found ({bundle} is not a model bundle)")
    digest = _check_manifest(strict_loads(raw, path), path)["files"].get(name)
    return None if digest is None else _verified(Path(bundle) / name, digest)


def _check_manifest(manifest, path):
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise PipelineError(f"{path}: not a {FORMAT} manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version not in READ_VERSIONS:  # true == 1 in Python, yet no version
        raise PipelineError(f"{path}: bundle format version {version!r:.40}, this code reads versions "
                            f"{' and '.join(map(str, READ_VERSIONS))}")
    for name, digest in key_of(manifest, "files", dict, path).items():
        plain_name(name, path, "files")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise PipelineError(f"{path}: key 'files' gives {name!r:.80} no sha256 (64 hex digits)")
    if not key_of(manifest, "pairs", list, path):
        raise PipelineError(f"{path}: key 'pairs' is empty")
    for i in range(len(manifest["pairs"])):
        for kind in KINDS:
            plain_name(key_of(manifest, f"pairs.{i}.{kind}", str, path), path, f"pairs.{i}.{kind}")
    if key_of(manifest, "labels", list, path) != list(LABELS):
        raise PipelineError(f"{path}: label order {manifest['labels']!r:.200} differs from {list(LABELS)}")
    if manifest.get("postprocess") != POSTPROCESS:
        raise PipelineError(f"{path}: key 'postprocess' is {manifest.get('postprocess')!r:.80}, this "
                            f"code applies {POSTPROCESS}")
    return manifest


def _verified(path, digest):
    data = _read_plain(path)
    if data is None:
        raise PipelineError(f"{path}: listed in the bundle's {MANIFEST} but missing")
    if sha256_hex(data) != digest:
        raise PipelineError(f"{path}: sha256 does not match the bundle's {MANIFEST} "
                            "(file modified or corrupt); refusing to load")
    return data


def listed(bundle, files, name):
    if name not in files:
        raise PipelineError(f"{Path(bundle) / name}: not listed in the bundle's {MANIFEST}")
    return files[name]
