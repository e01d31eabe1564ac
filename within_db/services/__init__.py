"""Domain services: module-level functions that take and return models."""
