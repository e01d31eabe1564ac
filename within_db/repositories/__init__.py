"""Repositories: the aggregates an API serves, for one acting user, in pydantic schemas.

Each method states its query count (a test proves it); lists are keyset pages with signed
cursors; writes with domain rules go through the services.
"""

from within_db.repositories.analytics import SavedQueryRepository
from within_db.repositories.base import CURSOR_SECRET_ENV, Page, Repository
from within_db.repositories.campaigns import CampaignRepository
from within_db.repositories.ml import ModelRegistryRepository, PredictionLogRepository
from within_db.repositories.users import UserRepository

__all__ = [
    "CURSOR_SECRET_ENV",
    "CampaignRepository",
    "ModelRegistryRepository",
    "Page",
    "PredictionLogRepository",
    "Repository",
    "SavedQueryRepository",
    "UserRepository",
]
