"""The ``mvae`` group loads the command groups that live in other modules (``images``,
``benchmark``) only when they are used: ``mvae fit`` and ``mvae --help`` import none of them.

Imports are read from ``sys.modules`` of a fresh interpreter that runs ``python -m mvae ...``
(``-X importtime`` would not see modules loaded through :func:`importlib.import_module`).
"""

import json
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from mvae.cli import LAZY_COMMANDS, main

# Runs `python -m mvae ARGS` in this interpreter, then prints the mvae modules it imported.
_SCRIPT = """
import json, runpy, sys
sys.argv = ["mvae", *json.loads(sys.argv[1])]
try:
    runpy.run_module("mvae", run_name="__main__", alter_sys=True)
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stdout.write("\\n@@" + json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

LAZY_MODULES = ("mvae.images", "mvae.cli_benchmark", "mvae.benchmark", "mvae.evaluation")


def _modules_after(*args: str) -> list[str]:
    r = subprocess.run([sys.executable, "-c", _SCRIPT, json.dumps(args)], capture_output=True,
                       text=True, check=True)
    result = json.loads(r.stdout.rsplit("\n@@", 1)[1])
    assert result["code"] in (0, None), r.stderr
    return result["modules"]


def _lazy(modules: list[str]) -> list[str]:
    return [m for m in modules if m.startswith(LAZY_MODULES)]


@pytest.mark.parametrize("args", [("fit", "--help"), ("--help",), ("transform", "--help")])
def test_count_commands_and_help_import_no_image_or_benchmark_module(args):
    modules = _modules_after(*args)
    assert "mvae.cli" in modules  # the listing sees mvae's own modules
    assert _lazy(modules) == []


def test_images_help_imports_the_images_group_only():
    # the control for the test above: the same listing does see a lazily loaded group
    modules = _modules_after("images", "--help")
    assert "mvae.images.cli" in modules
    assert "mvae.images.model" not in modules and "torch" not in modules
    assert not any(m.startswith(("mvae.cli_benchmark", "mvae.benchmark")) for m in modules)


@pytest.mark.parametrize("name", sorted(LAZY_COMMANDS))
def test_lazy_command_resolves_and_its_listed_help_is_its_own(name):
    command = main.get_command(click.Context(main), name)
    assert isinstance(command, click.Group) and command.name == name
    assert name in main.list_commands(click.Context(main))
    # `mvae --help` shows the mapping's text without importing: it must read as the command's own
    listed = click.Command(name, help=LAZY_COMMANDS[name][1])
    for limit in (30, 45, 200):
        assert listed.get_short_help_str(limit) == command.get_short_help_str(limit)
    assert command.get_short_help_str(200) == LAZY_COMMANDS[name][1]


def test_main_help_lists_every_command():
    r = CliRunner().invoke(main, ["--help"])
    assert r.exit_code == 0
    commands = r.output.split("Commands:", 1)[1]
    listed = [line.split()[0] for line in commands.splitlines() if line.strip()]
    assert listed == sorted(["benchmark", "fit", "images", "info", "network", "sample", "score",
                             "simulate", "transform"])
    assert "Convolutional VAE, autoencoder" in commands


@pytest.mark.parametrize("args", [("images", "fit", "--help"), ("benchmark", "--help"),
                                  ("benchmark", "encoder-depth", "--help")])
def test_lazy_subcommands_answer(args):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"Usage: main {' '.join(args[:-1])} ")


def test_unknown_command_is_a_usage_error():
    r = CliRunner().invoke(main, ["imagez"])
    assert r.exit_code == 2 and "No such command 'imagez'" in r.output
