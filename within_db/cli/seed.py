"""``within-db seed``: migrate, then fill the database with deterministic synthetic data."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import click

from within_db.cli.output import format_option, note, render
from within_db.seed import DEFAULT_SEED, SCALES, Scale, run_seed

if TYPE_CHECKING:
    from within_db.cli import Settings

__all__ = ["seed"]

COUNT_NAMES = [f.name for f in dataclasses.fields(Scale)]


class _Progress:
    """Progress on stderr: a bar per phase on a terminal; otherwise a line when a phase starts
    and a heartbeat line every ``every`` seconds (what CI logs can show, as pip and dbt do)."""

    def __init__(self, scale: Scale, terminal: bool, every: float = 5.0) -> None:
        self.terminal = terminal
        self.every = every
        self.totals = {"users": scale.users, "campaigns": scale.users, "models": scale.models,
                       "predictions": scale.predictions, "analytics": scale.users}
        self.done: dict[str, int] = {}
        self.phase = "migrations"
        self.bars: dict[str, Any] = {}
        self.started = time.monotonic()
        self.stop = threading.Event()
        if not terminal:
            threading.Thread(target=self._heartbeat, daemon=True).start()

    def __call__(self, phase: str, n: int) -> None:
        first = phase not in self.done
        self.done[phase] = self.done.get(phase, 0) + n
        self.phase = phase
        if self.terminal:
            self._bar(phase).update(n)
        elif first:
            self._line()

    def _line(self) -> None:
        phase = self.phase
        total = self.totals.get(phase)
        count = f" {self.done.get(phase, 0):,}{f'/{total:,}' if total else ''}"
        note(f"seed: {phase}{count if phase in self.done else ''} "
             f"({time.monotonic() - self.started:.0f}s)")

    def _heartbeat(self) -> None:
        while not self.stop.wait(self.every):
            if self.done:  # silent while migrating or waiting for another seed's lock
                self._line()

    def _bar(self, phase: str) -> Any:
        if phase not in self.bars:
            for bar in self.bars.values():
                bar.render_finish()
            bar = click.progressbar(length=self.totals.get(phase, 0) or None,
                                    label=f"{phase:<12}", file=sys.stderr)
            bar.__enter__()
            self.bars[phase] = bar
        return self.bars[phase]

    def close(self) -> None:
        self.stop.set()
        for bar in self.bars.values():
            bar.__exit__(None, None, None)


def _parse_counts(values: tuple[str, ...]) -> dict[str, int]:
    counts = {}
    for item in values:
        name, sep, number = item.partition("=")
        if not sep or name not in COUNT_NAMES or not number.isdigit():
            raise click.BadParameter(
                f"expected NAME=N with NAME one of {', '.join(COUNT_NAMES)}, got {item!r}",
                param_hint="--count")
        counts[name] = int(number)
    return counts


@click.command()
@click.option("--scale", type=click.Choice(list(SCALES)), default="small", show_default=True,
              help="Row counts: see README for each scale.")
@click.option("--count", "counts", multiple=True, metavar="NAME=N",
              help=f"Override one count of the scale ({', '.join(COUNT_NAMES)}).")
@click.option("--seed", "seed", type=int, default=DEFAULT_SEED, show_default=True,
              help="Random seed: the same seed and scale give identical data.")
@click.option("--reset", is_flag=True, help="Drop and rebuild the schema first (loses data).")
@click.option("--append", is_flag=True, help="Add to a database that already holds data.")
@format_option
@click.pass_obj
def seed(settings: Settings, scale: str, counts: tuple[str, ...], seed: int, reset: bool,
         append: bool, fmt: str | None) -> None:
    """Apply pending migrations, then fill every table with realistic synthetic data.

    Refuses a database that already holds data unless --reset or --append is given.

    \b
    Examples:
      within-db seed
      within-db seed --scale tiny --seed 7 --reset
      within-db seed --scale medium --count predictions=50000
    """
    if reset and append:
        raise click.UsageError("--reset and --append exclude each other")
    overrides = _parse_counts(counts)
    chosen = dataclasses.replace(SCALES[scale], **overrides)
    progress = _Progress(chosen, sys.stderr.isatty())
    try:
        summary = run_seed(settings.database(), scale, seed, reset=reset, append=append,
                           overrides=overrides, progress=progress,
                           on_step=lambda name, way: settings.written.append(
                               f"{'applied' if way == 'up' else 'reverted'} {name}"))
    finally:
        progress.close()
    rows = [{"table": t, "rows": n, "added": summary["added"].get(t, 0)}
            for t, n in summary["tables"].items()]
    render(rows, fmt, columns=["table", "rows", "added"],
           document={"seconds": summary["seconds"], "tables": rows})
    note(f"seeded {sum(summary['added'].values()):,} rows in {summary['seconds']}s "
         f"(scale {scale}, seed {seed})")
