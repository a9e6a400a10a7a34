"""Registry events -> ``optimize_model`` runs, with deterministic run ids.

Push (MLflow webhooks) and pull (registry reconcile) both turn what they see into :class:`RunRequest`
objects through this module, so the same registry fact always maps to the same Airflow ``dag_run_id``:
``mlflow__<model>__v<version>__alias-<alias>``, ``...__stage-<stage>``, ``...__tag-optimize`` or
``...__created``. Creating a run whose id exists is a no-op, so retries, replays and a webhook racing the
reconcile never start a second run. An alias moved back to a version it pointed at before is a new fact: the
registered model's tag ``modelops.alias_run.<alias>`` (``"<version>|<run id>"``, written by whoever creates the
run, before creating it) records the alias's last move, and a move to another version than that gets
``...__alias-<alias>__after-<digest of the last move's run id>`` (:func:`alias_run_id`), while the same move
seen again (duplicate delivery, retry, poll) maps to the recorded run id.

Scope: by default only registered models opted in with the tag ``modelops.optimize=true`` are managed
(``MODELOPS_TRIGGER_SCOPE=all`` manages every model). A version tagged ``modelops.optimize=true`` is an
explicit request for that version and is honoured whatever the scope.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from modelops.contracts.naming import TAG_ALIAS_RUN, TAG_OPT_IN, TAG_STATUS
from modelops.settings import TRIGGER_SCOPES, Settings

DAG_ID = "optimize_model"
TRUE_VALUES = frozenset({"true", "1", "yes", "on"})
SCOPES = TRIGGER_SCOPES
OPT_IN_FILTER = f"tags.`{TAG_OPT_IN}` = 'true'"

EVENT_ALIAS_CREATED = "model_version_alias.created"
EVENT_TAG_SET = "model_version_tag.set"
EVENT_VERSION_CREATED = "model_version.created"

# Model-version statuses that say the version was optimized or is being optimized (the nightly planner's
# SETTLED_STATUSES, plus a rollout in flight or rolled back): reconcile starts no run for such a version.
HANDLED_STATUSES = frozenset({"optimizing", "deployed", "rejected", "canary", "rolled_back"})

_RUN_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
MAX_RUN_ID = 240  # Airflow's run_id column holds 250


def is_true(value: Any) -> bool:
    """True for the tag values that mean yes (``true``, ``1``, ``yes``, ``on``; any case)."""
    return str(value or "").strip().lower() in TRUE_VALUES


@dataclass(frozen=True)
class TriggerConfig:
    """Which registry events start runs. Build it with :meth:`from_env`."""

    aliases: tuple[str, ...] = ("champion", "production")
    stages: tuple[str, ...] = ("Production", "Staging")
    scope: str = "opted_in"
    on_version_created: bool = False
    poll_interval_s: float = 60.0
    dag_id: str = DAG_ID

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TriggerConfig:
        """The ``triggers`` group of :class:`modelops.settings.Settings` (``MODELOPS_TRIGGER_*``,
        ``MODELOPS_RECONCILE_INTERVAL_S``) of ``environ`` (default ``os.environ``), read at call time."""
        triggers = Settings.from_env(environ).triggers
        return cls(aliases=triggers.aliases, stages=triggers.stages, scope=triggers.scope,
                   on_version_created=triggers.on_version_created, poll_interval_s=triggers.reconcile_interval_s)

    def manages(self, model_tags: Mapping[str, str] | None) -> bool:
        """Whether registry events of a model with these tags start runs (scope / opt-in)."""
        return self.scope == "all" or is_true((model_tags or {}).get(TAG_OPT_IN))


@dataclass(frozen=True)
class RunRequest:
    """One ``optimize_model`` run to create (idempotently) under a deterministic ``run_id``."""

    run_id: str
    model_name: str
    model_version: str
    reason: str  # e.g. "alias champion -> v3"
    source: str  # webhook | reconcile | nightly
    settings: dict[str, Any] = field(default_factory=dict)  # variants / latency_slo_ms / accuracy_tolerance
    # alias moves: the registered-model tag (key, value) the creator writes before creating the run
    tag: tuple[str, str] | None = None

    @property
    def conf(self) -> dict[str, Any]:
        """The run conf: the version is pinned (an alias may move again before the run resolves it)."""
        return {"model_name": self.model_name, "model_version": self.model_version, "model_alias": None,
                **self.settings}

    @property
    def note(self) -> str:
        return f"{self.source}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        """JSON-safe form (asset event payloads, XCom)."""
        return {"run_id": self.run_id, "model_name": self.model_name, "model_version": self.model_version,
                "reason": self.reason, "source": self.source, "settings": dict(self.settings),
                "tag": list(self.tag) if self.tag else None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunRequest:
        tag = data.get("tag")
        return cls(str(data["run_id"]), str(data["model_name"]), str(data["model_version"]), str(data["reason"]),
                   str(data["source"]), dict(data.get("settings") or {}), (str(tag[0]), str(tag[1])) if tag else None)


def _safe(part: str) -> str:
    """``part`` restricted to Airflow's run id alphabet; a short hash keeps altered names distinct."""
    cleaned = _RUN_ID_UNSAFE.sub("_", part)
    if cleaned == part:
        return part
    return f"{cleaned}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


def run_id_for(model: str, version: str | int, kind: str, key: str = "", prefix: str = "mlflow") -> str:
    """The deterministic Airflow run id of a registry fact.

    Args:
        model: registered model name (any characters; unsafe ones are replaced and hashed).
        version: model version number.
        kind: ``alias``, ``stage``, ``tag``, ``created`` or ``fp`` (nightly fingerprint).
        key: the alias, stage, tag or fingerprint; lower-cased for stages.
        prefix: ``mlflow`` for registry events, ``nightly`` for the nightly planner.

    Returns:
        e.g. ``mlflow__digits__v3__alias-champion``; at most 240 characters.
    """
    suffix = f"{kind}-{_safe(key)}" if key else kind
    return _capped(f"{prefix}__{_safe(model)}__v{int(version)}__{suffix}")


def _capped(run_id: str) -> str:
    """``run_id`` cut to :data:`MAX_RUN_ID` characters, a digest of the whole keeping cut ids distinct."""
    if len(run_id) > MAX_RUN_ID:
        digest = hashlib.sha256(run_id.encode()).hexdigest()[:12]
        run_id = f"{run_id[: MAX_RUN_ID - 14]}__{digest}"
    return run_id


def alias_tag(alias: str) -> str:
    """The registered-model tag that remembers the last move of ``alias`` (``"<version>|<run id>"``)."""
    return f"{TAG_ALIAS_RUN}.{alias}"


def alias_run_id(model: str, version: str | int, alias: str, last_move: str = "") -> str:
    """The run id of ``alias`` pointing at ``version``, given the alias's last recorded move (its tag value).

    - no move recorded: ``mlflow__<model>__v<version>__alias-<alias>``;
    - the last move was to this version (the same fact seen again: a duplicate delivery, a retry, a poll):
      that move's run id, so the run is not created twice;
    - the last move was to another version: a new move (e.g. back to an older version), a new run id,
      ``...__alias-<alias>__after-<digest of the last move's run id>``, unique along the alias's history.
    """
    base = run_id_for(model, version, "alias", alias)
    last_version, _, last_run = last_move.partition("|")
    if not last_run:
        return base
    if last_version == str(int(version)):
        return last_run
    return _capped(f"{base}__after-{hashlib.sha256(last_run.encode()).hexdigest()[:10]}")


def alias_request(model: str, version: str, alias: str, source: str,
                  model_tags: Mapping[str, str] | None = None) -> RunRequest:
    """The run for ``alias`` pointing at ``version``; ``model_tags`` (the registered model's) give the alias's
    last move (:func:`alias_run_id`). The creator writes :attr:`RunRequest.tag` before creating the run."""
    key = alias_tag(alias)
    run_id = alias_run_id(model, version, alias, str((model_tags or {}).get(key) or ""))
    return RunRequest(run_id, model, str(version), f"alias {alias} -> v{version}", source,
                      tag=(key, f"{int(version)}|{run_id}"))


def record_alias_moves(client: Any, requests: Iterable[RunRequest]) -> None:
    """Write each alias request's :attr:`RunRequest.tag` on its registered model (``MlflowClient``), before the
    runs are created: the next move of the alias is then told apart from this one."""
    for request in requests:
        if request.tag is not None:
            client.set_registered_model_tag(request.model_name, request.tag[0], request.tag[1])


def with_model_tags(request: RunRequest, model_tags: Mapping[str, str] | None) -> RunRequest:
    """``request`` re-derived once the registered model's tags are known (the webhook maps before reading them)."""
    if request.tag is None or not request.tag[0].startswith(f"{TAG_ALIAS_RUN}."):
        return request
    alias = request.tag[0].removeprefix(f"{TAG_ALIAS_RUN}.")
    return alias_request(request.model_name, request.model_version, alias, request.source, model_tags)


def stage_request(model: str, version: str, stage: str, source: str) -> RunRequest:
    """The run for a (legacy) stage transition of ``version`` to ``stage``."""
    return RunRequest(run_id_for(model, version, "stage", stage.lower()), model, str(version),
                      f"stage {stage} -> v{version}", source)


def tag_request(model: str, version: str, source: str) -> RunRequest:
    """The run for ``modelops.optimize=true`` set on ``version`` (an explicit request, whatever the scope)."""
    return RunRequest(run_id_for(model, version, "tag", "optimize"), model, str(version),
                      f"tag {TAG_OPT_IN}=true on v{version}", source)


def created_request(model: str, version: str, source: str) -> RunRequest:
    """The run for a new ``version`` (only when ``MODELOPS_TRIGGER_ON_VERSION_CREATED`` is on)."""
    return RunRequest(run_id_for(model, version, "created"), model, str(version), f"new version v{version}", source)


# -- push: one webhook payload -> at most one run ---------------------------------------------------
@dataclass(frozen=True)
class MappedEvent:
    """What a webhook event asks for: a run request, or why it asks for nothing."""

    request: RunRequest | None
    needs_opt_in_check: bool = False  # the registered model's tags must be read before creating the run
    ignored: str = ""


def event_name(body: Mapping[str, Any]) -> str:
    """``<entity>.<action>`` of an MLflow webhook body."""
    return f"{body.get('entity', '')}.{body.get('action', '')}"


def map_webhook_event(body: Mapping[str, Any], config: TriggerConfig) -> MappedEvent:
    """Map an MLflow webhook body (``{"entity", "action", "timestamp", "data"}``) to a run request.

    - ``model_version_alias.created`` (also sent when an alias moves): a run when the alias is one of the
      configured ones (``MODELOPS_TRIGGER_ALIASES``; a model's ``modelops.alias`` only steers the nightly run).
    - ``model_version_tag.set`` with ``modelops.optimize=true``: a run for that version (explicit request).
    - ``model_version.created``: a run only when ``MODELOPS_TRIGGER_ON_VERSION_CREATED`` is on.

    Alias and created events of a model need its opt-in tag (``needs_opt_in_check``) unless the scope is all.
    """
    data = body.get("data") or {}
    kind = event_name(body)
    if not isinstance(data, Mapping):
        return MappedEvent(None, ignored=f"{kind}: data is not an object")
    name, version = str(data.get("name") or ""), str(data.get("version") or "")
    if not name or not (version.isascii() and version.isdigit()):
        return MappedEvent(None, ignored=f"{kind}: no model name/version in the payload")
    check = config.scope != "all"
    if kind == EVENT_ALIAS_CREATED:
        alias = str(data.get("alias") or "")
        if not alias:
            return MappedEvent(None, ignored="alias event without an alias")
        if alias not in config.aliases:
            return MappedEvent(None, ignored=f"alias {alias} is not watched ({', '.join(config.aliases)})")
        return MappedEvent(alias_request(name, version, alias, "webhook"), needs_opt_in_check=check)
    if kind == EVENT_TAG_SET:
        if data.get("key") != TAG_OPT_IN or not is_true(data.get("value")):
            return MappedEvent(None, ignored=f"tag {data.get('key')!r} is not the opt-in tag")
        return MappedEvent(tag_request(name, version, "webhook"))
    if kind == EVENT_VERSION_CREATED:
        if not config.on_version_created:
            return MappedEvent(None, ignored="model_version.created is not configured to start runs")
        return MappedEvent(created_request(name, version, "webhook"), needs_opt_in_check=check)
    return MappedEvent(None, ignored=f"event {kind} does not start runs")


def admit(mapped: MappedEvent, model_tags: Mapping[str, str] | None, config: TriggerConfig) -> str:
    """Second stage of :func:`map_webhook_event` once the model's tags are known: '' to go, else why not."""
    if mapped.request is None:
        return mapped.ignored
    if mapped.needs_opt_in_check and not config.manages(model_tags):
        return f"model {mapped.request.model_name} is not opted in ({TAG_OPT_IN}=true)"
    return ""


# -- pull: registry snapshot -> every run that should exist ----------------------------------------
def wanted_runs(registered_models: Iterable[Any], config: TriggerConfig) -> list[RunRequest]:
    """Every run the current registry state calls for, from ``search_registered_models`` results alone.

    Uses each model's ``aliases`` (alias -> version) and ``latest_versions`` (the latest version per stage,
    with ``current_stage``): no per-model registry call. Models outside the scope are skipped. With
    ``on_version_created``, the newest version of each model gets its ``__created`` run unless its
    ``modelops.status`` says it was optimized or is in progress (a burst of versions created while the
    receiver was down recovers the newest one only).
    """
    wanted: dict[str, RunRequest] = {}
    stages = {s.lower(): s for s in config.stages}
    for rm in registered_models:
        tags = dict(getattr(rm, "tags", None) or {})
        if not config.manages(tags):
            continue
        aliases = dict(getattr(rm, "aliases", None) or {})
        for alias in config.aliases:
            if alias in aliases:
                req = alias_request(rm.name, str(aliases[alias]), alias, "reconcile", tags)
                wanted[req.run_id] = req
        for mv in getattr(rm, "latest_versions", None) or []:
            stage = str(getattr(mv, "current_stage", "") or "")
            if stage.lower() in stages:
                req = stage_request(rm.name, str(mv.version), stages[stage.lower()], "reconcile")
                wanted[req.run_id] = req
        newest = max(getattr(rm, "latest_versions", None) or [], key=lambda mv: int(mv.version), default=None)
        status = str(dict(getattr(newest, "tags", None) or {}).get(TAG_STATUS) or "")
        if config.on_version_created and newest is not None and status not in HANDLED_STATUSES:
            req = created_request(rm.name, str(newest.version), "reconcile")
            wanted[req.run_id] = req
    return sorted(wanted.values(), key=lambda r: r.run_id)


def search_models(client: Any, config: TriggerConfig, page_size: int = 1000) -> Iterable[Any]:
    """All registered models in scope, page by page (one registry call per ``page_size`` models)."""
    filter_string = OPT_IN_FILTER if config.scope == "opted_in" else None
    token: str | None = None
    while True:
        page = client.search_registered_models(filter_string=filter_string, max_results=page_size, page_token=token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return



def tagged_version_runs(model_versions: Iterable[Any]) -> list[RunRequest]:
    """Tag runs (``...__tag-optimize``) for versions tagged ``modelops.optimize=true`` that were never optimized.

    The pull side of the ``model_version_tag.set`` webhook: a version whose ``modelops.status`` says it was
    optimized or is in progress (:data:`HANDLED_STATUSES`, e.g. by an alias run) gets none, so reconcile never
    builds the same candidates twice; one with no status or ``failed`` does (the run id stays deterministic,
    so a tag run that exists already is not started again).
    """
    wanted: dict[str, RunRequest] = {}
    for mv in model_versions:
        tags = dict(getattr(mv, "tags", None) or {})
        if not is_true(tags.get(TAG_OPT_IN)) or str(tags.get(TAG_STATUS) or "") in HANDLED_STATUSES:
            continue
        req = tag_request(mv.name, str(mv.version), "reconcile")
        wanted[req.run_id] = req
    return sorted(wanted.values(), key=lambda r: r.run_id)


def search_tagged_versions(client: Any, page_size: int = 1000) -> Iterable[Any]:
    """Every model version tagged ``modelops.optimize`` = ``true``, any model (one call per ``page_size``)."""
    token: str | None = None
    while True:
        page = client.search_model_versions(filter_string=OPT_IN_FILTER, max_results=page_size, page_token=token)
        yield from page
        token = getattr(page, "token", None)
        if not token:
            return


def registry_requests(client: Any, config: TriggerConfig) -> list[RunRequest]:
    """Every run the registry calls for, for every trigger kind the webhook handles: alias (and legacy stage)
    facts of the models in scope, and versions tagged ``modelops.optimize=true`` (:func:`tagged_version_runs`).

    ``model_version.created`` (when configured) is reconciled by :func:`wanted_runs` for each model's newest
    version.
    """
    wanted = {r.run_id: r for r in wanted_runs(search_models(client, config), config)}
    wanted.update((r.run_id, r) for r in tagged_version_runs(search_tagged_versions(client)))
    return sorted(wanted.values(), key=lambda r: r.run_id)
