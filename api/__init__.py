"""HTTP job service: FastAPI API, SQLAlchemy job store, workers. See api/README_SERVICE.md.

Nothing here imports torch: only the validator subprocess and the workers' job children do.
"""
