"""Create the compose file's S3 buckets (``MODELOPS_S3_BUCKETS``, comma-separated), versioned; keep existing ones.

Credentials come from ``AWS_SHARED_CREDENTIALS_FILE`` and the endpoint from ``AWS_ENDPOINT_URL`` (boto3 reads both).
"""

from __future__ import annotations

import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError


def main() -> int:
    """Create every bucket that does not exist yet and turn versioning on; 1 with a one-line error otherwise."""
    s3 = boto3.client("s3")
    for _ in range(30):
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except EndpointConnectionError:
            time.sleep(2)
    else:
        print(f"s3-init: S3 at {os.environ.get('AWS_ENDPOINT_URL')} did not answer", file=sys.stderr)
        return 1
    for bucket in filter(None, os.environ.get("MODELOPS_S3_BUCKETS", "").split(",")):
        try:
            if bucket not in existing:
                s3.create_bucket(Bucket=bucket)
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        except ClientError as exc:
            print(f"s3-init: bucket {bucket}: {exc.response['Error'].get('Code')}", file=sys.stderr)
            return 1
        print(f"s3-init: bucket {bucket} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
