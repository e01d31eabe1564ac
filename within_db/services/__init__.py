"""Domain services: module-level functions that take and return models."""

__all__ = ["analytics", "audit", "campaigns", "ml_system", "users"]
