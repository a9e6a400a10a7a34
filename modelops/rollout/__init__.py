"""Progressive rollout: canary / A-B steps judged by live gateway metrics (PromQL), with automatic rollback.

- :mod:`modelops.rollout.analysis`: Prometheus queries per deployment and the pure verdict (``judge``);
- :mod:`modelops.rollout.state`: the rollout state document ``s3://<triton bucket>/rollouts/<model>.json``;
- :mod:`modelops.rollout.controller`: begin / apply_step / record_verdict / promote / rollback, one lease per model.
"""
