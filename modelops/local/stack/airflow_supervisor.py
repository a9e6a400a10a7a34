"""Airflow's components for the embedded stack, each restarted when it dies (what Kubernetes does in production).

``airflow standalone`` starts the scheduler, DAG processor, API server and triggerer once and never restarts
them: a scheduler killed mid-run (OOM killer, a stray ``kill``) left the stack with no scheduler until someone
ran ``stack down`` and ``up``. This supervisor is the stack's Airflow service instead:

- it migrates the metadata database (``airflow db migrate``, as ``standalone`` does with ``initdb``), then starts
  the four components from PATH (the stack's shim keeps the scheduler's and triggerer's log servers off);
- a component that exits is started again after a backoff (1 s doubling to 30 s, back to 1 s once it has run
  for a minute), each restart logged with the exit status;
- SIGTERM/SIGINT stop every component (SIGTERM, then SIGKILL after a grace period) and then the supervisor.

A new scheduler resets the task instances the dead one had queued or running (LocalExecutor cannot adopt them),
so they run again as their next try: steps write run-scoped paths, publishing is claim-based, so a second try
loses nothing and publishes nothing twice.

Run as ``python -m modelops.local.stack.airflow_supervisor`` with the Airflow environment of the stack.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

COMPONENTS: dict[str, list[str]] = {
    "scheduler": ["scheduler"],
    "dag-processor": ["dag-processor"],
    "api-server": ["api-server"],
    "triggerer": ["triggerer"],
}
BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
HEALTHY_RUN_S = 60.0  # a component that ran this long gets the short backoff again after it dies
STOP_GRACE_S = 20.0

log = logging.getLogger("modelops.airflow_supervisor")


@dataclass
class Component:
    """One supervised ``airflow <component>`` process and its restart bookkeeping."""

    name: str
    args: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff_s: float = BACKOFF_START_S
    next_start: float = 0.0
    history: list[int] = field(default_factory=list)  # exit statuses, oldest first

    def start(self, airflow: str) -> None:
        self.process = subprocess.Popen([airflow, *self.args], stdin=subprocess.DEVNULL)
        self.started_at = time.monotonic()
        log.warning("started %s (pid %d)%s", self.name, self.process.pid,
                    f", restart {self.restarts}" if self.restarts else "")

    def reap(self, now: float) -> bool:
        """True when the process has exited (and schedules its restart)."""
        if self.process is None or self.process.poll() is None:
            return False
        code = self.process.returncode
        self.history.append(code)
        ran_s = now - self.started_at
        if ran_s >= HEALTHY_RUN_S:
            self.backoff_s = BACKOFF_START_S
        self.next_start = now + self.backoff_s
        log.warning("%s (pid %d) exited with status %d after %.0f s; restarting in %.0f s",
                    self.name, self.process.pid, code, ran_s, self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
        self.process = None
        self.restarts += 1
        return True


class Supervisor:
    """Start, watch and restart the components; stop them all on SIGTERM/SIGINT."""

    def __init__(self, airflow: str = "airflow", components: dict[str, list[str]] | None = None) -> None:
        self.airflow = airflow
        self.components = [Component(name, args) for name, args in (components or COMPONENTS).items()]
        self._stopping = False

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping the Airflow components", signum)
        self._stopping = True

    def migrate(self) -> None:
        """``airflow db migrate``; raises SystemExit with its status when it fails (nothing to supervise)."""
        code = subprocess.call([self.airflow, "db", "migrate"], stdin=subprocess.DEVNULL)
        if code != 0:
            log.error("airflow db migrate failed with status %d", code)
            raise SystemExit(code)

    def run(self, poll_s: float = 0.5) -> int:
        """Supervise until a stop signal; returns 0."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for comp in self.components:
            comp.start(self.airflow)
        while not self._stopping:
            now = time.monotonic()
            for comp in self.components:
                comp.reap(now)
                if comp.process is None and now >= comp.next_start and not self._stopping:
                    comp.start(self.airflow)
            time.sleep(poll_s)
        self.stop()
        return 0

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        """SIGTERM every running component, SIGKILL what is left after ``grace_s``."""
        running = [c.process for c in self.components if c.process is not None and c.process.poll() is None]
        for proc in running:
            proc.terminate()
        deadline = time.monotonic() + grace_s
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    """Entry point: migrate, then supervise."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout,
                        format="%(asctime)s supervisor %(levelname)s %(message)s")
    sup = Supervisor()
    sup.migrate()
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
