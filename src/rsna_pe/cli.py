"""The command-line convention every stage shares: ``[-c FILE] [key.sub=value ...]``."""
import argparse
import logging
import sys

from .config import default_config, load_config
from .errors import PipelineError


def setup_logging():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)


def parse(description, default=None, argv=None, add_args=None):
    """Parse ``-c FILE`` and overrides; return ``(cfg, args)``.

    ``default`` names the stage's natural config under the repo's ``configs/``; without it
    ``-c`` is required. ``add_args(parser)`` adds stage-specific flags.
    """
    p = argparse.ArgumentParser(description=description)
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
    return load_config(path, args.overrides), args


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
