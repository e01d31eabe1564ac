"""within_db: the data layer of the WITHIN ad-prediction system.

Import models from ``within_db.models.<domain>``, services from ``within_db.services``.
"""

from within_db import errors
from within_db.db import connect, database, get_db

__version__ = "0.1.0"

__all__ = ["__version__", "connect", "database", "errors", "get_db"]
