"""HTTP job service: FastAPI API, SQLAlchemy job store, workers. See docs/service.md.

Nothing here imports torch: only the validator subprocess and the workers' job children do.
"""
