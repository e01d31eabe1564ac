"""The within_db exception hierarchy.

Every error the library raises on purpose is a WithinDBError. Messages say what was found,
what was expected and what to run next; they never carry a password, token, hash or row value.
"""

__all__ = [
    "ArchiveDestinationError", "BulkInsertError", "ConfigurationError", "ConflictError",
    "DatabaseUnavailableError", "InvalidTransitionError", "MigrationError", "NotConnectedError",
    "NotFoundError", "NotMigratedError", "NothingToArchiveError", "PermissionDeniedError",
    "ReadOnlyError", "ValidationError", "VerificationError", "WithinDBError",
]


class WithinDBError(Exception):
    """Base class of every error raised by within_db on purpose."""

    exit_code = 1


class ConfigurationError(WithinDBError):
    """The database URL or another setting is missing or malformed."""

    exit_code = 2


class NotConnectedError(ConfigurationError, AttributeError):
    """The database proxy was used before ``within_db.connect()`` bound it."""


class DatabaseUnavailableError(WithinDBError):
    """The database server could not be reached."""


class ReadOnlyError(WithinDBError):
    """A write reached a read-only database: a replica, or a read-only transaction."""


class DatabaseBusyError(WithinDBError):
    """Another writer held a lock past the busy timeout, or the server cancelled a deadlock;
    nothing was written and the operation may be retried."""


class QueryFailedError(WithinDBError):
    """The database refused an operation for a reason other than the data (a defect)."""


class NotMigratedError(WithinDBError):
    """The database schema is missing or behind the migrations."""


class MigrationError(WithinDBError):
    """A migration could not be planned or applied."""


class ValidationError(WithinDBError, ValueError):
    """A value was refused before it reached the database, or by one of its constraints."""


class ArgumentError(ValidationError):
    """A name, option or value the caller gave is not valid here (an unknown table or column,
    a count out of range); the CLI reports it as a usage error (exit 2)."""

    exit_code = 2


class NotFoundError(WithinDBError, LookupError):
    """The requested row does not exist."""


class ConflictError(WithinDBError):
    """The write conflicts with a row that already exists (a UNIQUE constraint)."""


class PermissionDeniedError(WithinDBError):
    """The acting user lacks the permission the operation needs."""


class InvalidTransitionError(WithinDBError):
    """A state machine (training jobs, model stages) was asked for an illegal move."""


class BulkInsertError(WithinDBError):
    """A bulk write was rejected; nothing was written. ``position`` is the 0-based row index."""

    def __init__(self, message: str, position: int | None = None, constraint: str | None = None):
        super().__init__(message)
        self.position = position
        self.constraint = constraint


class AuditChainError(WithinDBError):
    """The audit log failed verification: a row was changed, removed or inserted, or a signed
    checkpoint's head is missing or different."""


class ArchiveDestinationError(WithinDBError):
    """The archive's target is not a directory this process can write files in."""


class NothingToArchiveError(WithinDBError):
    """No month before the cutoff holds rows: there is nothing to write (or drop)."""


class VerificationError(WithinDBError):
    """A written copy does not match the database (its rows changed since, or the copy is
    incomplete); nothing was dropped for the months it names."""
