#!/usr/bin/env bash
# ray job submit with the code of this checkout and the S3 settings of your shell:
#   scripts/submit.sh python jobs/train.py --config configs/cc3m_cc12m.yaml
#   scripts/submit.sh --with-credentials python jobs/segment.py ...   # S3 services without instance profiles (MinIO)
# The region and endpoint (AWS_REGION, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL[_S3]) go into the job's
# runtime environment. Credentials do not: on AWS every node finds its own through its instance
# profile (cluster.yaml), which outlives a session token. --with-credentials also forwards
# AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN, for S3 services that have no
# instance profiles; nothing is written to a file either way. RAY_ADDRESS picks the cluster
# (default: the dashboard of `ray dashboard cluster.yaml`, http://127.0.0.1:8265).
set -euo pipefail
cd "$(dirname "$0")/.."
with_credentials=0
if [ "${1:-}" = "--with-credentials" ]; then
  with_credentials=1
  shift
fi
env_vars=$(WITH_CREDENTIALS=$with_credentials python3 - <<'PY'
import json, os
names = ["AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
if os.environ["WITH_CREDENTIALS"] == "1":
    names += ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]
print(json.dumps({"env_vars": {n: os.environ[n] for n in names if os.environ.get(n)}}))
PY
)
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env-json "$env_vars" -- "$@"
