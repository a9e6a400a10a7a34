"""Airflow pool sizes from the cluster's GPU capacity, by GPU product and MIG profile.

Each schedulable, Ready node's allocatable ``nvidia.com/gpu`` (full GPUs, or MIG slices under the GPU
Operator's ``single`` strategy, where the product label names the profile) and ``nvidia.com/mig-<profile>``
(``mixed`` strategy) are added up per GPU Feature Discovery product (``nvidia.com/gpu.product``). One pool
per (product, profile), one slot per GPU or slice, named ``<prefix>-<product>[-mig-<profile>]`` in lower case:
the names ``MODELOPS_K8S_POOL`` takes (deploy/airflow/kpo-defaults.yaml).

    python deploy/gpu_capacity.py                      # the cluster (kubernetes client: in-cluster or kubeconfig)
    python deploy/gpu_capacity.py --kubectl            # the same through `kubectl get nodes -o json`
    python deploy/gpu_capacity.py --nodes-json F       # a saved `kubectl get nodes -o json`
    python deploy/gpu_capacity.py --format json > pools.json && airflow pools import pools.json

The CronJob in deploy/airflow/gpu-capacity-cronjob.yaml runs the last line every 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
PRODUCT_LABEL = "nvidia.com/gpu.product"
UNKNOWN_PRODUCT = "unknown"


class CapacityError(Exception):
    """The nodes could not be read or are not a node list; the message is one line."""


@dataclass(frozen=True)
class GpuCapacity:
    """Allocatable GPUs (or MIG slices of one profile) of one product, over the nodes that have them."""

    product: str
    profile: str | None  # MIG profile such as "1g.10gb" (mixed strategy); None for full GPUs
    slots: int
    nodes: tuple[str, ...]

    @property
    def resource(self) -> str:
        """The extended resource a pod requests for one slot."""
        return f"{MIG_RESOURCE_PREFIX}{self.profile}" if self.profile else GPU_RESOURCE

    def pool_name(self, prefix: str = "gpu") -> str:
        """``<prefix>-<product>[-mig-<profile>]``, lower case, characters outside ``[a-z0-9._-]`` as ``-``."""
        name = f"{prefix}-{self.product}" + (f"-mig-{self.profile}" if self.profile else "")
        return re.sub(r"[^a-z0-9._-]+", "-", name.lower())


def _quantity(value: Any) -> int:
    """An extended-resource quantity (always a whole number) as int; anything else is 0."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def _is_ready(node: Mapping[str, Any]) -> bool:
    conditions = node.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def skip_reason(node: Mapping[str, Any]) -> str | None:
    """Why a node's GPUs are not counted (cordoned, not Ready), or None."""
    if node.get("spec", {}).get("unschedulable"):
        return "cordoned"
    if not _is_ready(node):
        return "not Ready"
    return None


def node_slots(node: Mapping[str, Any]) -> dict[tuple[str, str | None], int]:
    """(product, MIG profile or None) -> allocatable slots of one node."""
    labels = node.get("metadata", {}).get("labels") or {}
    allocatable = node.get("status", {}).get("allocatable") or {}
    product = labels.get(PRODUCT_LABEL) or UNKNOWN_PRODUCT
    slots: dict[tuple[str, str | None], int] = {}
    for resource, value in allocatable.items():
        count = _quantity(value)
        if count <= 0:
            continue
        if resource == GPU_RESOURCE:
            slots[(product, None)] = count
        elif resource.startswith(MIG_RESOURCE_PREFIX):
            slots[(product, resource.removeprefix(MIG_RESOURCE_PREFIX))] = count
    return slots


def gpu_capacity(nodes: Iterable[Mapping[str, Any]], skipped: dict[str, str] | None = None) -> list[GpuCapacity]:
    """Allocatable GPU capacity by product and MIG profile, sorted by pool name.

    Args:
        nodes: node objects as ``kubectl get nodes -o json`` lists them under ``items``.
        skipped: if given, receives node name -> why its GPUs were left out.
    """
    totals: dict[tuple[str, str | None], int] = {}
    holders: dict[tuple[str, str | None], list[str]] = {}
    for node in nodes:
        name = node.get("metadata", {}).get("name", "?")
        slots = node_slots(node)
        if not slots:
            continue
        reason = skip_reason(node)
        if reason:
            if skipped is not None:
                skipped[name] = reason
            continue
        for key, count in slots.items():
            totals[key] = totals.get(key, 0) + count
            holders.setdefault(key, []).append(name)
    caps = [GpuCapacity(product, profile, count, tuple(sorted(holders[(product, profile)])))
            for (product, profile), count in totals.items()]
    return sorted(caps, key=lambda c: c.pool_name())


def airflow_pools(capacities: Iterable[GpuCapacity], prefix: str = "gpu") -> dict[str, dict[str, Any]]:
    """The pools in ``airflow pools import`` format: name -> slots, description, include_deferred."""
    pools: dict[str, dict[str, Any]] = {}
    for cap in capacities:
        what = f"{cap.product} MIG {cap.profile}" if cap.profile else cap.product
        pools[cap.pool_name(prefix)] = {
            "slots": cap.slots,
            "description": f"{cap.slots} x {what} ({cap.resource}) on {len(cap.nodes)} node(s)",
            # a deferred KubernetesPodOperator step still holds its GPU: it keeps its pool slot
            "include_deferred": True,
        }
    return pools


def nodes_from_document(doc: Any) -> list[dict[str, Any]]:
    """The node objects of a NodeList (``kubectl get nodes -o json``)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise CapacityError("expected a node list (the JSON of `kubectl get nodes -o json`) with an `items` array")
    return doc["items"]


def read_nodes_file(path: Path) -> list[dict[str, Any]]:
    """Nodes from a saved ``kubectl get nodes -o json``."""
    try:
        return nodes_from_document(json.loads(path.read_text()))
    except OSError as exc:
        raise CapacityError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CapacityError(f"{path} is not JSON: {exc.msg} at line {exc.lineno}") from None


def read_nodes_kubectl(kubectl: str = "kubectl") -> list[dict[str, Any]]:
    """Nodes through ``kubectl get nodes -o json`` (its current context)."""
    try:
        proc = subprocess.run([kubectl, "get", "nodes", "-o", "json"], capture_output=True, text=True, timeout=60,
                              check=False)
    except FileNotFoundError:
        raise CapacityError(f"{kubectl} not found") from None
    except subprocess.TimeoutExpired:
        raise CapacityError("kubectl get nodes ran past 60 s") from None
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CapacityError(f"kubectl get nodes failed: {last}")
    return nodes_from_document(json.loads(proc.stdout))


def read_nodes_client() -> list[dict[str, Any]]:
    """Nodes through the kubernetes Python client: in-cluster config, else the kubeconfig."""
    try:
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException
    except ImportError:
        raise CapacityError("the kubernetes Python client is not installed: use --kubectl or --nodes-json") from None
    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config()
        except (ConfigException, OSError) as exc:
            raise CapacityError(f"no cluster configuration (in-cluster or kubeconfig): {exc}") from None
    api = client.ApiClient()
    try:
        items = client.CoreV1Api(api).list_node(_request_timeout=60).items
    except Exception as exc:  # noqa: BLE001 - ApiException, urllib3 errors: one line either way
        raise CapacityError(f"cannot list nodes: {str(exc).splitlines()[0]}") from None
    return [api.sanitize_for_serialization(node) for node in items]


def render_table(capacities: list[GpuCapacity], skipped: Mapping[str, str], prefix: str) -> str:
    """A human-readable summary: one line per pool, then the nodes left out."""
    lines = [f"{'pool':<48} {'slots':>5}  resource"]
    lines += [f"{c.pool_name(prefix):<48} {c.slots:>5}  {c.resource}" for c in capacities]
    if not capacities:
        lines.append("(no allocatable GPUs)")
    lines += [f"left out: {name} ({why})" for name, why in sorted(skipped.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line: print the pools (table or ``airflow pools import`` JSON); 2 with a one-line error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--nodes-json", type=Path, metavar="FILE", help="a saved `kubectl get nodes -o json`")
    source.add_argument("--kubectl", action="store_true", help="read the nodes through kubectl")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument("--prefix", default="gpu", help="pool name prefix (default gpu)")
    args = parser.parse_args(argv)
    try:
        if args.nodes_json:
            nodes = read_nodes_file(args.nodes_json)
        elif args.kubectl:
            nodes = read_nodes_kubectl()
        else:
            nodes = read_nodes_client()
    except CapacityError as exc:
        print(f"gpu_capacity: error: {exc}", file=sys.stderr)
        return 2
    skipped: dict[str, str] = {}
    capacities = gpu_capacity(nodes, skipped)
    if args.format == "json":
        print(json.dumps(airflow_pools(capacities, args.prefix), indent=2, sort_keys=True))
        for name, why in sorted(skipped.items()):
            print(f"gpu_capacity: left out {name} ({why})", file=sys.stderr)
    else:
        print(render_table(capacities, skipped, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
