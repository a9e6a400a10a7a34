"""Heavy steps. Each is ``python -m modelops.steps.<step> --spec <json file or s3 uri> --result <path>``.

Exit code 0 = done, 99 = not applicable here (skipped), anything else = failed with a one-line reason
on stderr. A step reads the run spec (written by ``resolve``) and the results of earlier steps from
``<run prefix>/<step>/result.json``; it writes its own result to ``--result`` and to the same place.
"""

HEAVY_STEPS = ("export", "optimize", "compile", "validate", "benchmark")
EXIT_SKIPPED = 99


def step_command(step: str, spec: str, result: str) -> list[str]:
    """The arguments after the worker's ``python`` that run ``step`` (a local subprocess or a pod's command)."""
    if step not in HEAVY_STEPS:
        raise ValueError(f"unknown step {step!r}; known: {', '.join(HEAVY_STEPS)}")
    return ["-m", f"modelops.steps.{step}", "--spec", spec, "--result", result]
