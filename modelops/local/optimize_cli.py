"""``modelops optimize MODEL_URI``: one optimization without Airflow (:func:`modelops.runs.local.optimize`).

MLflow and S3 come from ``MLFLOW_TRACKING_URI`` and the ``AWS_*`` variables, or from the embedded stack when
``MLFLOW_TRACKING_URI`` is unset. Prints the variants table (or ``--json``); exits 1 with one line on failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

from modelops.contracts.variants import VARIANT_NAMES

JSON_KEYS = ("model_name", "model_version", "eval_data", "chosen_variant", "variants", "mlflow_run_id", "deployment")


def _variants(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--variants a,b`` or ``--variants a b`` (a model URI swallowed by the list is put back); unknown names exit 2."""
    if args.variants is None:
        return
    names = [v.strip() for item in args.variants for v in item.split(",") if v.strip()]
    if args.model_uri is None:
        uris = [n for n in names if n.startswith("models:/")]
        args.model_uri = uris[-1] if uris else None
        names = [n for n in names if not n.startswith("models:/")]
    unknown = [v for v in names if v not in VARIANT_NAMES]
    if unknown or not names:
        parser.error(f"argument --variants: unknown variant(s) {unknown or args.variants}; known: "
                     f"{', '.join(VARIANT_NAMES)}")  # fmt: skip
    args.variants = names


def _cmd(args: argparse.Namespace) -> int:
    from rich.console import Console

    _variants(args.parser, args)
    if args.model_uri is None:
        args.parser.error("the following arguments are required: MODEL_URI")

    from modelops.runs.local import OptimizeError, optimize, parse_model_uri, stack_environment

    err = Console(stderr=True)
    try:
        parse_model_uri(args.model_uri)
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            os.environ.update(stack_environment())  # the embedded stack's MLflow and S3 (its settings too)
        with contextlib.redirect_stdout(sys.stderr):  # stdout holds the result only (MLflow prints run links)
            out = optimize(args.model_uri, variants=args.variants, eval_data=args.eval_data, publish=args.publish,
                           latency_slo_ms=args.latency_slo_ms, accuracy_tolerance=args.accuracy_tolerance,
                           config_search=not args.no_config_search, recipe=args.recipe,
                           on_step=None if args.json else lambda step, status: err.print(f"[dim]{step}[/dim] {status}"))
    except OptimizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({k: out[k] for k in JSON_KEYS if k in out}, indent=2, default=str))
        return 0
    from modelops.local.demo import eval_data_line, summary_table

    console = Console()
    console.print(summary_table(out["summary"], llm=out["generative"]))
    console.print(eval_data_line(out["summary"]))
    console.print(f"chosen: {out['chosen_variant'] or 'none'}; MLflow run {out['mlflow_run_id']}"
                  + (f"; published as {out['deployment']}" if out.get("deployment") else ""))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``optimize`` to the ``modelops`` command line."""
    parser = subparsers.add_parser("optimize", help="optimize a registered model without Airflow (same steps, "
                                   "MLflow run and tags; published only with --publish)")  # fmt: skip
    parser.add_argument("model_uri", metavar="MODEL_URI", nargs="?",
                        help="models:/<name>/<version> or models:/<name>@<alias>")
    parser.add_argument("--variants", nargs="+", default=None, metavar="VARIANT",
                        help="variants, comma- or space-separated (default: the recipe's family defaults)")
    parser.add_argument("--eval-data", default=None, metavar="URI",
                        help="S3 URI or path of a Parquet/CSV/JSONL/npz file for the accuracy gate and calibration")
    parser.add_argument("--publish", action="store_true", help="publish the chosen candidate to the Triton repository")
    parser.add_argument("--latency-slo-ms", type=float, default=100.0)
    parser.add_argument("--accuracy-tolerance", type=float, default=0.01)
    parser.add_argument("--no-config-search", action="store_true", help="benchmark the default configuration only")
    parser.add_argument("--recipe", default=None, help="a recipe name instead of the flavor's")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(func=_cmd, parser=parser)
    return parser
