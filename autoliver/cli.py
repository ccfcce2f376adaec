"""The ``autoliver`` command: one sub-command per pipeline step.

Each stage keeps its sub-commands in its own ``cli.py`` with a ``register(subparsers)`` function;
the commands themselves are thin: parse, call the stage's API, print. Parsing is strict (a
misspelt flag is an error; no abbreviations), every ``--help`` shows defaults and an example.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from autoliver import __version__, progress
from autoliver.errors import UserError

# Order = order in `autoliver --help`. Modules that a build lacks are skipped.
COMMAND_MODULES = [
    "autoliver.demo",
    "autoliver.datasets.cli",
    "autoliver.synthetic.cli",
    "autoliver.fingerprint.cli",
    "autoliver.planning.cli",
    "autoliver.preprocessing.cli",
    "autoliver.training.cli",
    "autoliver.inference.cli",
    "autoliver.evaluation.cli",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (except empty ones and switches) and keeps the example block's line breaks."""

    def _get_help_string(self, action):
        if action.default in (None, False) or isinstance(action, argparse._StoreTrueAction):
            return action.help
        return super()._get_help_string(action)


def add_command(subparsers, name: str, *, help: str, example: str, description: str | None = None):
    """Create a sub-command parser with the house conventions (defaults shown, an example, strict)."""
    p = subparsers.add_parser(
        name,
        help=help,
        description=(description or help) + f"\n\nexample:\n  {example}",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


def add_dataset_arg(p, required: bool = True) -> None:
    p.add_argument("-d", "--dataset", required=required, default=None,
                   help="dataset: id (3), full name (Dataset003_LiTS) or name (LiTS)")


def add_folder_args(p, *kinds: str) -> None:
    for kind in kinds:
        fallback = " or $nnUNet_raw" if kind == "raw" else ""
        p.add_argument(f"--{kind}-dir", default=None,
                       help=f"{kind} folder (default: $AUTOLIVER_{kind.upper()}{fallback} or ~/autoliver_data/{kind})")


def add_progress_arg(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="do not draw progress bars")


def add_workers_arg(p, default: int = 2) -> None:
    p.add_argument("-np", "--num-processes", type=int, default=default, help="worker processes")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autoliver",
        description="Self-configuring liver and liver-tumour segmentation (CT, DCE-MRI).\n\n"
        "example:\n  autoliver demo\n  autoliver plan_and_preprocess -d LiTS\n"
        "  autoliver train 3d_fullres 0\n  autoliver predict -i in -o out",
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"autoliver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    progress.log_to_stderr()
    if getattr(args, "no_progress", False):
        progress.set_enabled(False)
    try:
        result = args.func(args)
    except UserError as e:
        if args.debug:
            traceback.print_exc()
        print(f"autoliver {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"autoliver {args.command}: interrupted; re-run the same command to resume.", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    raise SystemExit(main())
