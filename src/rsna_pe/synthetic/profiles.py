"""Named synthetic data sets (configs/profiles.yml): the demo's, the bench's, the bench's on thin
slices. One file holds their numbers; make_synthetic_data.py (``--profile``), run_demo.sh
(``PROFILE=``) and scripts/compare_options.py (``--profile``) read them from it.

A profile gives :func:`~rsna_pe.synthetic.generate`'s ``n_train``, ``n_test``, ``slices``,
``matrix``, ``positive_fraction``, ``seed`` and, for thin slices, ``slice_spacing``;
``base: NAME`` takes another profile's keys first, its own over them.
"""
from pathlib import Path

import yaml

from ..core.errors import ConfigError
from ..core.paths import REPO_ROOT

PROFILES_FILE = REPO_ROOT / "configs" / "profiles.yml"
DEFAULT_PROFILE = "demo"
REQUIRED = ("n_train", "n_test", "slices", "matrix", "positive_fraction", "seed")
OPTIONAL = {"slice_spacing": None}
KEYS = REQUIRED + tuple(OPTIONAL)


def _read(path):
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not YAML ({' '.join(str(e).split())[:200]})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigError(f"{path}: want profile names, each with a mapping of keys")
    return data


def _resolve(data, name, path, chain=()):
    if name not in data:
        raise ConfigError(f"{path}: no profile '{name}' (there are: {', '.join(data)})")
    if name in chain:
        raise ConfigError(f"{path}: profile bases loop: {' -> '.join((*chain, name))}")
    own = dict(data[name])
    base = own.pop("base", None)
    unknown = sorted(set(own) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: profile '{name}': unknown keys {unknown} (known: {list(KEYS)})")
    out = _resolve(data, base, path, (*chain, name)) if base is not None else {}
    return {**out, **own}


def load_profile(name, path=PROFILES_FILE):
    """{key: value} of profile ``name``, every key of KEYS present (slices [MIN, MAX])."""
    prof = {**OPTIONAL, **_resolve(_read(path), name, path)}
    missing = [k for k in REQUIRED if k not in prof]
    if missing:
        raise ConfigError(f"{path}: profile '{name}' lacks {missing}")
    slices = prof["slices"]
    if not (isinstance(slices, list) and len(slices) == 2):
        raise ConfigError(f"{path}: profile '{name}': slices must be [MIN, MAX], not {slices!r}")
    return prof


def profile_names(path=PROFILES_FILE):
    return list(_read(path))


def describe(prof):
    """One line that says what a profile's data set holds (for tables and plans)."""
    lo, hi = prof["slices"]
    spacing = (f"thin slices {prof['slice_spacing']:g} mm apart" if prof["slice_spacing"]
               else "slices over the whole chest")
    return (f"{prof['n_train']} train + {prof['n_test']} test studies, {lo}-{hi} {spacing}, "
            f"{prof['matrix']} px matrix, {prof['positive_fraction']:g} positive, "
            f"generator seed {prof['seed']}")


# make_synthetic_data.py's option for each key.
FLAGS = {"n_train": "--n-train", "n_test": "--n-test", "slices": "--slices", "matrix": "--matrix",
         "positive_fraction": "--positive-fraction", "seed": "--seed",
         "slice_spacing": "--slice-spacing"}


def with_overrides(name, overrides, path=PROFILES_FILE):
    """(label, values, make_synthetic_data.py arguments) of profile ``name`` with ``overrides``
    ({key: value}; None keeps the profile's) over it; the label names what was overridden."""
    given = {k: (list(v) if k == "slices" else v) for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(FLAGS))
    if unknown:
        raise ConfigError(f"profile '{name}': no key {unknown} to override (known: {list(FLAGS)})")
    args = ["--profile", name]
    for k, v in given.items():
        args += [FLAGS[k], *(str(x) for x in (v if k == "slices" else [v]))]
    label = name + "".join(f", {k} {v}" for k, v in given.items())
    return label, {**load_profile(name, path), **given}, args
