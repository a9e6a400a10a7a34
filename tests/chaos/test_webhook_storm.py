"""200 hostile and faulty deliveries to the real webhook receiver (Airflow's API server plugin), concurrently.

The mix: 110 genuine deliveries (``modelops.optimize=true`` set on versions 1..110 of one model: an explicit
request, one run each), 40 duplicates of them (MLflow retries, byte for byte), 20 forged signatures, 10 stale
timestamps, 10 oversized bodies and 10 bodies that are not UTF-8 (the last three correctly signed, so the
refusal is theirs, not the signature's). Lost: nothing (every genuine delivery has its run); started by
mistake: nothing (no other run for the model); what the sender sees: the exact status and a one-line reason.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest

from modelops.contracts.naming import TAG_OPT_IN
from modelops.local.webhook_cli import RECEIVER_PATH
from modelops.triggers.events import run_id_for
from modelops.triggers.signature import sign
from tests.chaos.conftest import raw_post, runs_for_model
from tests.integration import triggers_helpers as th

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

GENUINE, DUPLICATES, FORGED, STALE, OVERSIZED, NOT_UTF8 = 110, 40, 20, 10, 10, 10
RETRIES_503 = (1.0, 2.0, 4.0)  # MLflow's retry backoff of a 5xx answer (same delivery id)


@dataclass
class Shot:
    kind: str  # genuine | duplicate | forged | stale | oversized | not_utf8
    group: str  # the delivery id: a genuine delivery and its duplicates share it
    body: bytes
    headers: dict[str, str]
    version: int
    answers: list[tuple[int, dict]] = field(default_factory=list)

    @property
    def status(self) -> int:
        return self.answers[-1][0]


def _event(model: str, version: int, pad: int = 0) -> bytes:
    data = {"name": model, "version": str(version), "key": TAG_OPT_IN, "value": "true"}
    if pad:
        data["padding"] = "x" * pad
    return json.dumps({"entity": "model_version_tag", "action": "set", "timestamp": "2026-01-01T00:00:00Z",
                       "data": data}).encode()


def _headers(secret: str, body: bytes, delivery: str, ts: int | None = None) -> dict[str, str]:
    stamp = str(int(time.time()) if ts is None else ts)
    return {"Content-Type": "application/json", "X-MLflow-Delivery-Id": delivery, "X-MLflow-Timestamp": stamp,
            "X-MLflow-Signature": sign(secret, delivery, stamp, body)}


def _shots(model: str, secret: str, limit: int) -> list[Shot]:
    shots: list[Shot] = []
    for v in range(1, GENUINE + 1):
        body, delivery = _event(model, v), str(uuid.uuid4())
        shots.append(Shot("genuine", delivery, body, _headers(secret, body, delivery), v))
    for original in random.Random(14).sample(shots[:GENUINE], DUPLICATES):
        shots.append(Shot("duplicate", original.group, original.body, original.headers, original.version))
    v = 1000
    for kind, count in (("forged", FORGED), ("stale", STALE), ("oversized", OVERSIZED), ("not_utf8", NOT_UTF8)):
        for _ in range(count):
            v += 1
            delivery = str(uuid.uuid4())
            body = _event(model, v, pad=limit + 1 if kind == "oversized" else 0)
            if kind == "not_utf8":
                body = body.replace(b'"true"', b'"tr\xff\xfeue"')
            key = "not-the-secret" if kind == "forged" else secret
            ts = int(time.time()) - 600 if kind == "stale" else None
            shots.append(Shot(kind, delivery, body, _headers(key, body, delivery, ts), v))
    random.Random(1414).shuffle(shots)
    return shots


def _fire(url: str, shot: Shot) -> None:
    """Deliver as MLflow does: a 5xx is retried with the same delivery id (and a fresh signature timestamp)."""
    for delay in (*RETRIES_503, None):
        status, answer = raw_post(url, shot.body, shot.headers)
        try:
            parsed = json.loads(answer) if answer else {}
        except ValueError:
            parsed = {"raw": answer[:200].decode("utf-8", "replace")}
        shot.answers.append((status, parsed))
        if status < 500 or delay is None:
            return
        time.sleep(delay)


@pytest.fixture(scope="module")
def storm(stack, settings, webhook_secret, quiet_optimize, airflow):
    model = th.unique("chaos_storm")
    url = f"{stack['airflow']['url'].rstrip('/')}{RECEIVER_PATH}"
    shots = _shots(model, webhook_secret, settings.webhook.max_body_kb * 1024)
    quiet_optimize.extend(run_id_for(model, v, "tag", "optimize") for v in range(1, GENUINE + 1))
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:  # MLflow delivers from a thread pool too
        list(pool.map(lambda s: _fire(url, s), shots))
    elapsed = time.monotonic() - started
    runs = runs_for_model(airflow, model)
    print(f"\n200 deliveries in {elapsed:.1f} s; first answers {Counter(s.answers[0][0] for s in shots)}; "
          f"final {Counter((s.kind, s.status) for s in shots)}; runs {len(runs)}")
    return {"model": model, "shots": shots, "runs": runs}


def test_the_mix_is_as_specified(storm):
    kinds = Counter(s.kind for s in storm["shots"])
    assert sum(kinds.values()) == 200
    assert kinds == {"genuine": GENUINE, "duplicate": DUPLICATES, "forged": FORGED, "stale": STALE,
                     "oversized": OVERSIZED, "not_utf8": NOT_UTF8}


def test_each_delivery_id_starts_its_run_exactly_once(storm):
    """A genuine delivery and its duplicates (sent concurrently, any order): one 202 naming the run, the rest 409."""
    groups: dict[str, list[Shot]] = defaultdict(list)
    for shot in storm["shots"]:
        if shot.kind in ("genuine", "duplicate"):
            groups[shot.group].append(shot)
    assert len(groups) == GENUINE
    for shots in groups.values():
        statuses = sorted(s.status for s in shots)
        assert statuses == [202] + [409] * (len(shots) - 1), [s.answers for s in shots]
        accepted = next(s for s in shots if s.status == 202).answers[-1][1]
        assert accepted["run_id"] == run_id_for(storm["model"], shots[0].version, "tag", "optimize")
        assert accepted["run"] in ("created", "exists")
        for refused in (s for s in shots if s.status == 409):
            assert refused.answers[-1][1]["error"] in ("delivery already received", "delivery in progress")


@pytest.mark.parametrize(("kind", "status", "reason"), [
    ("forged", 401, "signature mismatch"),
    ("stale", 400, "stale timestamp"),
    ("oversized", 413, "over the limit"),
    ("not_utf8", 400, "not UTF-8"),
])
def test_hostile_deliveries_get_their_status_and_reason(storm, kind, status, reason):
    shots = [s for s in storm["shots"] if s.kind == kind]
    assert shots
    for shot in shots:
        assert len(shot.answers) == 1, shot.answers  # refused at once: nothing to retry
        got, body = shot.answers[0]
        assert got == status and reason in body.get("error", ""), (kind, got, body)


def test_exactly_the_expected_runs_exist(storm):
    """Nothing lost (110 genuine versions have their run), nothing started by hostile input (no other run)."""
    expected = {run_id_for(storm["model"], v, "tag", "optimize") for v in range(1, GENUINE + 1)}
    assert set(storm["runs"]) == expected
    for run in storm["runs"].values():
        assert run["conf"]["model_version"] in {str(v) for v in range(1, GENUINE + 1)}
        assert (run.get("note") or "").startswith("webhook: tag modelops.optimize=true")
