"""The command-line convention every stage shares: ``[-c FILE] [key.sub=value ...]``."""
import argparse
import logging
import sys

from .config import default_config, describe, load_config
from .errors import ConfigError, PipelineError


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def parse(description, default=None, argv=None, add_args=None):
    """Parse ``-c FILE`` and overrides; return ``(cfg, args)``.

    ``default`` names the stage's natural config under the repo's ``configs/``; without it
    ``-c`` is required. ``add_args(parser)`` adds stage-specific flags.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=_help_keys(argv, default))
    p.add_argument("-c", "--config", default=None,
                   help=f"YAML config (default: configs/{default})" if default else "YAML config")
    if add_args:  # first, so a stage's own positionals come before the overrides
        add_args(p)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value",
                   help="typed config overrides, e.g. dataset.fold=1")
    args = p.parse_intermixed_args(argv)
    path = args.config or (default_config(default) if default else None)
    if path is None:
        p.error("-c/--config is required")
    cfg = load_config(path, args.overrides)
    if default and args.config:
        _check_complete(cfg, path, default)
    return cfg, args


def _check_complete(cfg, path, default):
    """A config must hold every top-level key of the stage's own config (most inherit it with
    ``base:``): a missing one would otherwise surface as a traceback deep in the stage."""
    missing = [k for k in load_config(default_config(default)) if k not in cfg and k != "run_name"]
    if missing:
        raise ConfigError(f"config {path}: missing key '{missing[0]}' ({len(missing)} missing; a stage config "
                          f"holds every key of configs/{default}, usually by base: on it)")


def _config_arg(argv):
    for i, a in enumerate(argv):
        if a in ("-c", "--config") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def _help_keys(argv, default):
    """For ``-h``: every key of the config that would be read, with its default and comment."""
    if not {"-h", "--help"} & set(argv):
        return None
    path = _config_arg(argv) or (default_config(default) if default else None)
    if path is None:
        return "config keys: pass -c FILE -h to list the keys of a config"
    try:
        return f"config keys of {path} (override any as key.sub=value):\n{describe(path)}"
    except (OSError, ConfigError) as e:
        return f"config keys: cannot read {path} ({e})"


def run(main):
    """Run a stage's ``main``: a PipelineError becomes one line on stderr and exit code 2."""
    setup_logging()
    try:
        rc = main()
    except PipelineError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)  # always one line
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc or 0)
