#!/usr/bin/env bash
# Quantize a project with the mctq-job image and gate on accuracy, for CI pipelines that
# generate model artifacts. The models, results.json and report.html are written whether the
# gate passes or not; the exit status says which (see the exit-code table in docs/running.md):
#
#   examples/ci/quantize-and-gate.sh PROJECT_DIR MAX_TOP1_DROP
#
# PROJECT_DIR holds configuration.json (notebook style: paths relative to it); MAX_TOP1_DROP
# is the largest allowed top-1 drop from the Keras model to model_quantized.tflite, as a
# fraction (0.02 = 2 points). The run's JSON lines are also kept in PROJECT_DIR/mctq-job.log.
#
# Environment: IMAGE (default mctq-job:latest), DOCKER (default docker).
set -euo pipefail

if (($# != 2)); then
  echo "usage: $0 PROJECT_DIR MAX_TOP1_DROP" >&2
  exit 2
fi
project="$(cd "$1" && pwd)"
max_drop="$2"
image="${IMAGE:-mctq-job:latest}"
docker="${DOCKER:-docker}"

set +e
"$docker" run --rm --network none --read-only --tmpfs /tmp --cap-drop ALL \
  --security-opt no-new-privileges --user "$(id -u):$(id -g)" \
  -v "$project:/workspace" -e MCTQ_MAX_TOP1_DROP="$max_drop" "$image" | tee "$project/mctq-job.log"
status=${PIPESTATUS[0]}
set -e

case "$status" in
  0) echo "quantize-and-gate: passed (top-1 drop within $max_drop)" >&2 ;;
  8) echo "quantize-and-gate: FAILED the accuracy gate (max top-1 drop $max_drop); artifacts kept for inspection" >&2 ;;
  *) echo "quantize-and-gate: the job failed with exit code $status (see the last line of $project/mctq-job.log)" >&2 ;;
esac
exit "$status"
