"""The documentation stays honest (the way sqlite-utils tests its docs): every CLI command's help
has an example of that command, README's CLI table lists exactly the commands that exist, its
Layout names every module, the imports follow the direction it states, no module outside db/
compares backend names, and every public module says what it exports."""

import ast
import importlib
import pkgutil
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import within_db
from within_db.cli import cli

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "within_db"
README = (ROOT / "README.md").read_text(encoding="utf-8")
MODULES = sorted(m.name for m in pkgutil.walk_packages(within_db.__path__, "within_db.")
                 if m.name != "within_db.__main__")
GLOBAL_OPTIONS = {"--database-url": 1, "--debug": 0}  # option -> how many values follow it


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(cli))


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _invoked_path(example: str) -> tuple[str, ...]:
    """The command path an example line runs: its words before the first argument or option,
    global options skipped."""
    words = example.split()[1:]
    path = []
    while words:
        word = words.pop(0)
        if word in GLOBAL_OPTIONS:
            del words[:GLOBAL_OPTIONS[word]]
        elif re.fullmatch(r"[a-z][a-z-]*", word) and (*path, word) in COMMANDS:
            path.append(word)
        else:
            break
    return tuple(path)


@pytest.mark.parametrize("path", list(COMMANDS), ids=lambda p: " ".join(("within-db", *p)))
def test_every_command_help_shows_an_example_of_that_command(path):
    result = CliRunner().invoke(cli, [*path, "--help"], prog_name="within-db")
    assert result.exit_code == 0, result.output
    help_text = result.output
    assert re.search(r"^\s*Examples?:$", help_text, re.M), f"no Example section:\n{help_text}"
    examples = [line.strip() for line in help_text.splitlines()
                if line.strip().startswith("within-db ")]
    # a group's examples may run its subcommands
    assert any(_invoked_path(e)[:len(path)] == path for e in examples), (
        f"no example runs `within-db {' '.join(path)}`; examples: {examples}")


def _readme_commands() -> list[tuple[str, ...]]:
    """The command path of each row of README's CLI table (words before options/arguments)."""
    rows = re.findall(r"^\| `(within-db[^`]*)` \|", _section("CLI reference"), re.M)
    assert rows, "README's CLI reference has no command table"
    paths = []
    for row in rows:
        words = []
        for word in row.split()[1:]:
            if not re.fullmatch(r"[a-z][a-z-]*", word):
                break
            words.append(word)
        paths.append(tuple(words))
    return paths


def test_readme_cli_table_lists_every_command_and_only_real_ones():
    listed = set(_readme_commands())
    commands = set(COMMANDS) - {()}
    assert commands - listed == set(), "commands missing from README's CLI table"
    assert listed - commands == set(), "README's CLI table lists commands that do not exist"


def test_readme_layout_names_every_module_and_script():
    layout = _section("Layout")
    entries = [p.name + ("/" if p.is_dir() else "") for p in PACKAGE.iterdir()
               if p.name not in {"__init__.py", "__main__.py", "__pycache__", "py.typed"}]
    entries += [p.name for p in (ROOT / "scripts").iterdir() if p.is_file()]
    missing = [e for e in entries if not re.search(rf"(?<![\w.]){re.escape(e)}", layout)]
    assert missing == [], f"README's Layout does not mention {missing}"


def _layers() -> dict[str, int]:
    """README's import direction, ``a <- b, c <- d``, as {component: layer}."""
    text = " ".join(_section("Layout").split())
    match = re.search(r"`(errors <- [^`]+)`", text)
    assert match, "README's Layout states no import direction"
    return {name.strip(): level for level, group in enumerate(match.group(1).split("<-"))
            for name in group.split(",")}


def _component(dotted: str) -> str | None:
    parts = dotted.split(".")
    return parts[1] if parts[0] == "within_db" and len(parts) > 1 else None


def _imports(path: Path) -> set[str]:
    """The within_db components a source file imports (function-level imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {_component(alias.name) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "within_db":
                found |= {alias.name for alias in node.names}
            else:
                found.add(_component(node.module))
    return found - {None, "__version__"}


def test_imports_follow_the_direction_readme_states():
    layers = _layers()
    sources = [p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE or p.stem not in
               {"__init__", "__main__"}]
    assert {_component(f"within_db.{p.relative_to(PACKAGE).parts[0]}".removesuffix(".py"))
            for p in sources} == set(layers), "README's import direction does not name every part"
    wrong = []
    for path in sources:
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for used in _imports(path):
            if layers[used] > layers[own]:
                wrong.append(f"{path.relative_to(ROOT)} ({own}) imports {used}")
    assert wrong == []


def test_no_module_outside_db_compares_backend_names():
    asks = re.compile(r"""(==|!=) *["'](postgres|sqlite)["']|["'](postgres|sqlite)["'] *(==|!=)""")
    # the db package owns the backend differences
    choosers = set((PACKAGE / "db").glob("*.py"))
    found = [f"{p.relative_to(ROOT)}:{n}" for p in PACKAGE.rglob("*.py") if p not in choosers
             for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if asks.search(line)]
    assert found == [], "backend differences belong on the database classes in db/"


@pytest.mark.parametrize("name", ["within_db", *MODULES])
def test_every_public_module_declares_what_it_exports(name):
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    for attr in exported:
        if not hasattr(module, attr):  # a package may export its submodules
            importlib.import_module(f"{name}.{attr}")
        assert hasattr(module, attr), f"{name}.__all__ names {attr!r}, which it does not define"


def test_setup_cfg_ships_every_package():
    import configparser

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg", encoding="utf-8")
    listed = set(config["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py")}
    assert found - listed == set(), "packages missing from setup.cfg: the wheel would lack them"
