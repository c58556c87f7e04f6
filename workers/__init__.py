"""Celery workers: apply canonical status events to Postgres."""
