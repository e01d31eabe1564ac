"""``within-db audit``: sign the audit log's head, verify the chain against signed heads."""

from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

import click

from within_db import migrate as migrations
from within_db.cli.output import format_option, note, render
from within_db.errors import AuditChainError
from within_db.services import audit as service

if TYPE_CHECKING:
    from within_db.cli import Settings

__all__ = ["audit"]


@click.group()
def audit() -> None:
    """Sign and verify the tamper-evident audit log.

    Checkpoints are signed with HMAC-SHA256 under $WITHIN_DB_AUDIT_KEY (at least 32
    characters); keep them where the database's users cannot write.

    \b
    Examples:
      within-db audit checkpoint >> /var/lib/audit-anchor/checkpoints.jsonl
      within-db audit verify --checkpoint /var/lib/audit-anchor/checkpoints.jsonl
    """


@audit.command()
@click.pass_obj
def checkpoint(settings: Settings) -> None:
    """Print the chain's head (last id, its hash, row count, time), signed, as one JSON line.

    Verify first: a checkpoint vouches for the head it signs. Needs $WITHIN_DB_AUDIT_KEY.

    \b
    Examples:
      within-db audit checkpoint >> /var/lib/audit-anchor/checkpoints.jsonl
      within-db audit checkpoint | ssh anchor 'cat >> checkpoints.jsonl'
    """
    db = settings.database()
    migrations.require_migrated(db)
    click.echo(service.checkpoint())


@audit.command()
@click.option("--checkpoint", "files", multiple=True, type=click.File("r"), metavar="FILE",
              help="Lines of `audit checkpoint` whose heads must still be in the chain "
                   "(repeatable; - for stdin). Needs $WITHIN_DB_AUDIT_KEY.")
@format_option
@click.pass_obj
def verify(settings: Settings, files: tuple[TextIO, ...], fmt: str | None) -> None:
    """Recompute the whole hash chain and check every checkpointed head is still there.

    Prints the report; exits 1 naming the first bad row or the missing head.

    \b
    Examples:
      within-db audit verify
      within-db audit verify --checkpoint /var/lib/audit-anchor/checkpoints.jsonl
    """
    db = settings.database()
    migrations.require_migrated(db)
    lines = [line for f in files for line in f.read().splitlines() if line.strip()]
    report = service.verify_audit_chain(checkpoints=lines if files else None)
    row = {"ok": report.ok, "checked": report.checked, "checkpoints": report.checkpoints,
           "broken_id": report.broken_id, "reason": report.reason}
    render([row], fmt, document=row)
    if not report.ok:
        raise AuditChainError(f"audit chain broken at row {report.broken_id}: {report.reason}")
    note(f"audit chain intact: {report.checked} rows, {report.checkpoints} checkpoint(s)")
