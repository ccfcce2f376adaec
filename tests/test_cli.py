"""The command line: every documented sub-command exists, shows defaults and an example, and
parsing is strict."""
from __future__ import annotations

import subprocess
import sys

import pytest

from autoliver.cli import build_parser, main

COMMANDS = [
    "demo", "convert_lits", "convert_msd", "verify_dataset", "make_synthetic", "extract_fingerprint",
    "plan", "preprocess", "plan_and_preprocess", "train", "predict", "ensemble",
    "find_best_configuration", "export", "evaluate", "report", "track",
]


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


def test_every_documented_command_is_registered():
    missing = [c for c in COMMANDS if c not in _subcommands()]
    assert not missing, f"sub-commands missing from `autoliver --help`: {missing}"


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_an_example(name):
    choices = _subcommands()
    if name not in choices:
        pytest.fail(f"{name} is not registered")
    text = choices[name].format_help()
    assert "example:" in text and f"autoliver {name}" in text


def test_misspelt_flag_is_an_error_not_ignored(capsys):
    with pytest.raises(SystemExit) as e:
        main(["verify_dataset", "-d", "1", "--no-progres"])
    assert e.value.code == 2
    assert "unrecognized arguments: --no-progres" in capsys.readouterr().err


def test_user_errors_are_one_line_and_exit_nonzero(autoliver_dirs, capsys):
    assert main(["verify_dataset", "-d", "Nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("autoliver verify_dataset: error: -d Nope: no dataset matches")


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "autoliver", "--help"], capture_output=True, text=True, check=True)
    assert "commands:" in out.stdout
