#!/usr/bin/env bash
# Check a submission with the daemon's MLE-bench validation server, as MLE-bench's
# /home/validate_submission.sh does: prints {"result": ..., "is_valid": ...}, never a score.
# The competition is $COMPETITION_ID when set (sent as the exp-id header), else the daemon's own.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    echo "usage: $0 SUBMISSION_FILE [PORT]" >&2
    echo "  PORT defaults to \$MLMASTER_VALIDATE_PORT, else 5000 (the daemon's" >&2
    echo "  [validation_server] port, set with: mlmaster daemon --validate-port PORT)." >&2
    echo "  COMPETITION_ID, when set, names the competition (or task id) to validate against." >&2
    exit 2
fi
file=$1
port=${2:-${MLMASTER_VALIDATE_PORT:-5000}}
if [[ ! -f "$file" ]]; then
    echo "$0: no such file: $file" >&2
    exit 2
fi

headers=()
if [[ -n "${COMPETITION_ID:-}" ]]; then
    headers=(-H "exp-id: ${COMPETITION_ID}")
fi
curl -sS -X POST -F "file=@${file}" ${headers[@]+"${headers[@]}"} "http://localhost:${port}/validate"
echo
