#!/usr/bin/env bash
# Submit an experiment as a Ray job to a local `ray start --head` cluster, follow its logs and
# exit with the job's outcome. Used by `make e2e` (CI) and handy by hand:
#   deploy/submit_local.sh configs/shapes-ci.yaml
# Ray 2.60 enables token auth by default; this single-user local cluster runs without it.
set -uo pipefail
config=${1:?usage: submit_local.sh CONFIG}
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
address=http://127.0.0.1:8265
temp=${RAY_TMP:-/tmp/t2i-rlhf-ray}
id="t2i-rlhf-$(date +%s)"

ray start --head --num-cpus 6 --dashboard-host 127.0.0.1 --dashboard-port 8265 --temp-dir "$temp" \
  --disable-usage-stats || exit 1
trap 'ray stop --force >/dev/null 2>&1' EXIT
# The job agent comes up a few seconds after `ray start` returns; the fixed submission id makes
# a retried submission safe (Ray refuses a second job with the same id).
for attempt in $(seq 1 30); do
  if ray job submit --address "$address" --submission-id "$id" --no-wait \
       --runtime-env deploy/runtime_env.yaml -- t2i-rlhf run --config "$config"; then
    break
  fi
  ray job status --address "$address" "$id" >/dev/null 2>&1 && break
  echo "job agent not ready yet (attempt $attempt); retrying" >&2
  sleep 3
done
ray job logs --address "$address" --follow "$id"
python - "$address" "$id" <<'PY'
import sys
from ray.job_submission import JobStatus, JobSubmissionClient

status = JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2])
print(f"job {sys.argv[2]}: {status}")
sys.exit(0 if status == JobStatus.SUCCEEDED else 1)
PY
