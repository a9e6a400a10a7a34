"""Serving: Triton model directories and processes, immutable deployments in the S3 repository, rollout into
the serving Triton and the routes files."""
