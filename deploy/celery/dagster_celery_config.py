"""Celery settings of the shard workers. `celery -A dagster_celery.app worker` reads this module when its folder is
on PYTHONPATH (dagster-celery's own `worker start` wrapper arranges the same)."""

import os

broker_url = os.environ["CELERY_BROKER_URL"]
result_backend = os.environ["CELERY_RESULT_BACKEND"]
worker_prefetch_multiplier = 1  # a worker holds no run it has not started
worker_disable_prefetch = True  # a busy worker leaves the next shard run to an idle one (Redis brokers)
