#!/usr/bin/env bash
# ray job submit with the code of this checkout and the S3 settings of your shell:
#   scripts/submit.sh python jobs/train.py --config configs/cc3m_cc12m.yaml
# AWS_* variables set here (credentials, region, endpoint) go into the job's runtime environment,
# so no secret is written in cluster.yaml or in a config file. RAY_ADDRESS picks the cluster
# (default: the dashboard of `ray dashboard cluster.yaml`, http://127.0.0.1:8265).
set -euo pipefail
cd "$(dirname "$0")/.."
env_vars=$(python3 - <<'PY'
import json, os
names = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
         "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
print(json.dumps({"env_vars": {n: os.environ[n] for n in names if os.environ.get(n)}}))
PY
)
exec ray job submit --address "${RAY_ADDRESS:-http://127.0.0.1:8265}" --working-dir . \
  --runtime-env-json "$env_vars" -- "$@"
