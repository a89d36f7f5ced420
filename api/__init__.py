"""HTTP job service (FastAPI, SQLAlchemy store, workers). Not built yet: see the README."""
