"""HTTP job service: FastAPI API, SQLAlchemy job store, workers. See the README, "The job service".

Nothing here imports torch: only the validator subprocess and the workers' job children do.
"""
