"""In a worker's pool process Optuna logs through ``logging`` at its own level. Its own stderr handler
wrote into Celery's stdout/stderr redirect, so every trial became a ``WARNING/ForkPoolWorker`` line
(issue 17, item 11)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# A pool process, in order: Celery redirects stderr to a logger at WARNING, forks, sends
# worker_process_init; the task then imports Optuna and runs trials. (A subprocess, because pytest
# hangs capture handlers on every logger, which would hide where Optuna's records go.)
POOL_PROCESS = """
import logging, sys
from celery.signals import worker_process_init
from celery.utils.log import LoggingProxy
logging.basicConfig(level=logging.INFO, format="%(levelname)s/%(name)s %(message)s", stream=sys.stdout)
sys.stderr = LoggingProxy(logging.getLogger("celery.redirected"), loglevel=logging.WARNING)
import workers.celery_app
worker_process_init.send(sender=None)
import optuna
optuna.create_study().optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
"""


def test_a_pool_process_logs_optuna_trials_at_info(tmp_path: Path) -> None:
    env = os.environ | {"PRUNESEARCH_DATA_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", POOL_PROCESS], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    trial_lines = [line for line in done.stdout.splitlines() if "Trial 0 finished" in line]
    assert len(trial_lines) == 1 and trial_lines[0].startswith("INFO/optuna"), done.stdout
