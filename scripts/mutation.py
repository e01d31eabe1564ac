"""Mutation testing of within_db's core modules with mutmut, on each backend in turn.

Per backend, a work folder ``.mutation/<backend>/`` gets links to the source tree and a copy
of setup.cfg whose ``[mutmut]`` mutates only the chosen modules; mutmut runs there with
WITHIN_DB_TEST_BACKENDS set to that backend and migrated template databases reused between
its pytest runs. A fixed-seed sample of each module's mutants (the same on both backends,
without the equivalent ones listed in docs/mutation.md) is run; the table says per module and
backend how many were killed, survived or timed out, and the survivors are listed.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import fnmatch
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
DOC = ROOT / "docs" / "mutation.md"
#: the modules of issue 19 (a folder stands for each of its files)
DEFAULT_MODULES = [
    "within_db/fields", "within_db/integrity.py", "within_db/services/users.py",
    "within_db/services/audit.py", "within_db/batch",
    "within_db/services/analytics/compiler.py", "within_db/services/analytics/definitions.py",
]
#: what the tests need beside the package (mutmut copies tests/ and setup.cfg itself)
LINKED = ["within_db", "tests", "migrations", "examples", "scripts", "docs", "README.md",
          "ruff.toml", "pyproject.toml"]
KILLED = {"killed", "segfault", "caught by type check"}  # segfault: killed by a signal
UNDETECTED = {"survived", "no tests"}
AGAIN = UNDETECTED | {"not checked", "check was interrupted by user"}
#: "`NAME`" equivalent everywhere; "`NAME` (sqlite)" only on that backend; NAME may end in
#: ``__mutmut_*`` for every mutant of a function
EQUIVALENT = re.compile(r"`(within_db\.[^`\s]+__mutmut_(?:\d+|\*))`(?: \((sqlite|postgres)\))?")

GENERATE = """
import sys
import libcst as cst
import mutmut.__main__ as mutmut_main
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
from mutmut.utils.file_utils import setup_source_paths

# mutmut 3 skips decorated functions, and every public function wears @public_api: mutate
# `def f` followed by `f = public_api(f)` instead, which behaves the same.
class Undecorate(cst.CSTTransformer):
    def leave_Module(self, original, updated):
        body = []
        for stmt in updated.body:
            if isinstance(stmt, cst.FunctionDef) and len(stmt.decorators) == 1 \\
                    and isinstance(stmt.decorators[0].decorator, cst.Name) \\
                    and stmt.decorators[0].decorator.value == "public_api":
                name = stmt.name.value
                stmt = [stmt.with_changes(decorators=[]),
                        cst.parse_statement(f"{name} = public_api({name})\\n")]
            body.extend(stmt if isinstance(stmt, list) else [stmt])
        return updated.with_changes(body=body)

write = mutmut_main.write_all_mutants_to_file
def undecorated(*, out, source, filename):
    if "@public_api" in source:
        source = cst.parse_module(source).visit(Undecorate()).code
    return write(out=out, source=source, filename=filename)
mutmut_main.write_all_mutants_to_file = undecorated  # the pool's forked workers inherit it

copy_src_dir(); copy_also_copy_files(); setup_source_paths(); create_mutants(int(sys.argv[1]))
"""


def module_files(spec: str) -> list[str]:
    """``fields``, ``within_db/fields.py`` or a folder -> the .py files (relative to ROOT)."""
    spec = spec.rstrip("/")
    candidates = [spec, f"within_db/{spec}", spec.replace(".", "/"),
                  f"within_db/{spec.replace('.', '/')}"]
    for candidate in candidates:
        for path in (ROOT / candidate, ROOT / f"{candidate}.py"):
            if path.is_file() and path.suffix == ".py":
                return [str(path.relative_to(ROOT))]
            if path.is_dir():
                return sorted(str(p.relative_to(ROOT)) for p in path.rglob("*.py")
                              if "__pycache__" not in p.parts)
    raise SystemExit(f"Error: no module {spec!r} under {ROOT}/within_db")


def equivalents() -> dict[str, set[str]]:
    """Mutant names docs/mutation.md lists as equivalent (each with its reason), by backend
    ("" for every backend)."""
    found: dict[str, set[str]] = {"": set(), "sqlite": set(), "postgres": set()}
    for name, backend in EQUIVALENT.findall(DOC.read_text() if DOC.exists() else ""):
        found[backend].add(name)
    return found


def prepare(workdir: Path, files: list[str], again: bool = False) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    # mutmut copies new files but never removes old ones: start its copies afresh (its test
    # coverage stays cached in mutants/mutmut-stats.json); --again keeps the last verdicts
    for copied in ("within_db", "tests"):
        if not (again and copied == "within_db"):
            shutil.rmtree(workdir / "mutants" / copied, ignore_errors=True)
    # mutmut's cached stats name the tests that reach the functions of the modules it
    # mutated before; with other modules it finds no test for any mutant and stops
    modules = workdir / "modules.txt"
    if not modules.exists() or modules.read_text() != "\n".join(files):
        (workdir / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)
    modules.write_text("\n".join(files))
    for name in LINKED:
        link = workdir / name
        if not link.is_symlink() and (ROOT / name).exists():
            link.symlink_to(ROOT / name)
    config = configparser.RawConfigParser()
    config.optionxform = str  # type: ignore[assignment,method-assign]
    config.read(ROOT / "setup.cfg")
    config["mutmut"]["only_mutate"] = "\n" + "\n".join(files)
    with open(workdir / "setup.cfg", "w") as handle:
        config.write(handle)


def environment(backend: str, workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["WITHIN_DB_TEST_BACKENDS"] = backend
    env["WITHIN_DB_TEST_REUSE_DIR"] = str(workdir / "templates")
    env["HYPOTHESIS_PROFILE"] = "mutation"
    env.pop("CI", None)
    # an unreachable PostgreSQL must fail the postgres pass, not make every mutant survive
    if backend == "postgres":
        env["WITHIN_DB_REQUIRE_POSTGRES"] = "1"
    else:
        env.pop("WITHIN_DB_REQUIRE_POSTGRES", None)
    return env


def mutants_of(workdir: Path, path: str) -> list[str]:
    meta = workdir / "mutants" / f"{path}.meta"
    if not meta.exists():
        return []
    return sorted(json.loads(meta.read_text())["exit_code_by_key"])


def statuses(workdir: Path, path: str) -> dict[str, str]:
    from mutmut.stats import status_by_exit_code

    meta = workdir / "mutants" / f"{path}.meta"
    codes = json.loads(meta.read_text())["exit_code_by_key"]
    return {name: status_by_exit_code[code] for name, code in codes.items()}


def listed(name: str, names: set[str]) -> bool:
    return name in names or any(fnmatch.fnmatchcase(name, n) for n in names if "*" in n)


def run_backend(backend: str, files: list[str], args: argparse.Namespace,
                skip: dict[str, set[str]]) -> dict[str, dict[str, str]]:
    """Run the sampled mutants of ``files`` on ``backend``; their statuses by file."""
    workdir = WORK / backend
    prepare(workdir, files, args.again)
    env = environment(backend, workdir)
    print(f"== {backend}: templates, mutants", file=sys.stderr)
    subprocess.run([sys.executable, "-c",
                    "import sys; sys.path.insert(0, '.'); from tests import conftest; "
                    "conftest.build_templates(sys.argv[1])", backend],
                   cwd=ROOT, env=env, check=True)
    subprocess.run([sys.executable, "-c", GENERATE, str(args.jobs)], cwd=workdir, env=env,
                   check=True, stdout=subprocess.DEVNULL)
    chosen: dict[str, list[str]] = {}
    for path in files:
        names = [name for name in mutants_of(workdir, path) if not listed(name, skip[""])]
        rng = random.Random(f"{args.seed}:{path}")
        chosen[path] = sorted(rng.sample(names, min(args.sample, len(names))))
    names = [name for group in chosen.values() for name in group
             if not listed(name, skip[backend])]
    if args.again:  # only what the last run left undetected (new tests only add kills)
        last = {name: status for path in files for name, status in statuses(workdir, path).items()}
        names = [name for name in names if last.get(name, "not checked") in AGAIN]
    if names:
        run_mutmut(backend, workdir, env, names, args)
    cleanup(env)
    results = {}
    for path, group in chosen.items():
        found = statuses(workdir, path) if group else {}
        results[path] = {name: "equivalent" if listed(name, skip[backend])
                         else found.get(name, "not checked") for name in group}
    return results


def run_mutmut(backend: str, workdir: Path, env: dict[str, str], names: list[str],
               args: argparse.Namespace) -> None:
    print(f"== {backend}: {len(names)} mutants (budget {args.budget} min)", file=sys.stderr)
    started = time.monotonic()
    log = open(workdir / "mutmut.log", "w")
    process = subprocess.Popen(["mutmut", "run", "--max-children", str(args.jobs), *names],
                               cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        process.wait(timeout=args.budget * 60)
    except subprocess.TimeoutExpired:
        print(f"== {backend}: budget spent, stopping mutmut", file=sys.stderr)
        process.send_signal(signal.SIGINT)  # mutmut stops its workers and saves results
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    finally:
        log.close()
    print(f"== {backend}: {time.monotonic() - started:.0f} s, log in {workdir}/mutmut.log",
          file=sys.stderr)


def cleanup(env: dict[str, str]) -> None:
    """Drop the PostgreSQL templates and the databases killed test runs left behind."""
    subprocess.run([sys.executable, "-c",
                    "import sys; sys.path.insert(0, '.'); from tests import conftest; "
                    "conftest.drop_templates(sys.argv[1])", env["WITHIN_DB_TEST_REUSE_DIR"]],
                   cwd=ROOT, env=env, check=False)


def summarise(results: dict[str, dict[str, dict[str, str]]], totals: dict[str, int]) -> list[dict]:
    """Count per module and backend. Not applicable here (n/a): a mutant docs/mutation.md
    calls equivalent on this backend, or one no test of this backend reaches but the other
    backend's tests judged (backend-specific code counts there)."""
    judged_elsewhere: dict[str, set[str]] = {}
    for backend, by_file in results.items():
        for found in by_file.values():
            for name, status in found.items():
                if status in KILLED | {"survived", "timeout"}:
                    judged_elsewhere.setdefault(name, set()).add(backend)
    rows = []
    for backend, by_file in results.items():
        for path, found in by_file.items():
            counts = {"killed": 0, "survived": 0, "timeout": 0, "n/a": 0, "other": 0}
            survivors, unjudged = [], []
            for name, status in sorted(found.items()):
                if status in KILLED:
                    counts["killed"] += 1
                elif status == "timeout":
                    counts["timeout"] += 1
                elif status == "equivalent" or (
                        status == "no tests" and judged_elsewhere.get(name, set()) - {backend}):
                    counts["n/a"] += 1
                elif status in UNDETECTED:
                    counts["survived"] += 1
                    survivors.append(name)
                else:
                    counts["other"] += 1
                    unjudged.append(name)
            judged = counts["killed"] + counts["survived"] + counts["timeout"]
            score = (counts["killed"] + counts["timeout"]) / judged if judged else None
            rows.append({"module": path, "backend": backend, "sampled": len(found),
                         "mutants": totals.get(path, 0), **counts, "score": score,
                         "survivors": survivors, "unjudged": unjudged})
    return rows


def print_table(rows: list[dict]) -> None:
    header = ("module", "backend", "sampled", "killed", "survived", "timeout", "n/a", "other",
              "score")
    lines = [header]
    for row in rows:
        if not row["mutants"]:
            continue  # a file without mutants (an __init__ that re-exports)
        score = "-" if row["score"] is None else f"{row['score']:.0%}"
        lines.append((row["module"], row["backend"], f"{row['sampled']}/{row['mutants']}",
                      *(str(row[k]) for k in header[3:8]), score))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(cell.ljust(width) if i < 2 else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))))


def show(backend: str, name: str) -> str:
    """The diff of one mutant, as ``mutmut show`` prints it."""
    done = subprocess.run(["mutmut", "show", name], cwd=WORK / backend, capture_output=True,
                          text=True, env=environment(backend, WORK / backend))
    changed = [line for line in done.stdout.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return " | ".join(line.strip() for line in changed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", metavar="MODULE",
                        help="a file or folder under within_db/ (default: the core modules)")
    parser.add_argument("--backends", default="sqlite,postgres",
                        help="comma-separated, run in this order (default: %(default)s)")
    parser.add_argument("--sample", type=int, default=200,
                        help="mutants per module file and backend (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=19, help="sampling seed (default: %(default)s)")
    parser.add_argument("--budget", type=float, default=60,
                        help="minutes per backend before mutmut is stopped (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="parallel mutants (default: %(default)s)")
    parser.add_argument("--diffs", action="store_true", help="print each survivor's diff")
    parser.add_argument("--again", action="store_true",
                        help="re-run only the sample's survivors of the last run (same modules, "
                             "seed and sample; the library unchanged since), keep the rest")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    files = [path for spec in (args.modules or DEFAULT_MODULES) for path in module_files(spec)]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not backends or set(backends) - {"sqlite", "postgres"}:
        parser.error("--backends takes sqlite, postgres or both")
    skip = equivalents()
    results = {}
    totals: dict[str, int] = {}
    for backend in backends:
        results[backend] = run_backend(backend, files, args, skip)
        for path in files:
            totals[path] = len(mutants_of(WORK / backend, path))
    rows = summarise(results, totals)
    print(f"mutation scores of {dt.date.today()} (seed {args.seed}, sample {args.sample}; "
          f"{sum(map(len, skip.values()))} documented equivalents)")
    print_table(rows)
    for row in rows:
        for name in row["survivors"]:
            diff = f"  {show(row['backend'], name)}" if args.diffs else ""
            print(f"survived [{row['backend']}] {name}{diff}")
        for name in row["unjudged"]:
            status = results[row["backend"]][row["module"]][name]
            print(f"unjudged [{row['backend']}] {name}: {status}")
    if args.json:
        args.json.write_text(json.dumps({"date": str(dt.date.today()), "seed": args.seed,
                                         "sample": args.sample, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
