"""How good a candidate is: accuracy gates (GX suites), shared metrics, perf_analyzer runs and the selection rule."""
