"""A reference FastAPI service on within_db: ``uvicorn examples.api.app:app``."""
