"""`python -m ranke`: the version, and a complete --help for every stage."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

import ranke
from ranke.cli import COMMANDS, main


def test_version(capsys):
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ranke {ranke.__version__}"), out
    run = subprocess.run([sys.executable, "-m", "ranke", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith("ranke ")


class _Parsed(Exception):
    pass


def _parsers(module_name: str, monkeypatch) -> list[argparse.ArgumentParser]:
    """The stage's parser (and its sub-commands' parsers), taken where main() parses."""
    seen = []

    def capture(self, *args, **kwargs):
        seen.append(self)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", capture)
    with pytest.raises(_Parsed):
        importlib.import_module(module_name).main(["--help"])
    parsers = list(seen)
    for parser in seen:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                parsers += list(action.choices.values())
    return parsers


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_stage_option_has_a_help_text(command, monkeypatch):
    module_name, summary = COMMANDS[command]
    assert summary
    missing = []
    for parser in _parsers(module_name, monkeypatch):
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{parser.prog}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "options without a help text:\n  " + "\n  ".join(missing)
