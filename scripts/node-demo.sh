#!/usr/bin/env bash
# The node on phantom studies, on the built-in defaults: serve on 127.0.0.1:11112 (any calling AE
# at CR 20, archived into ./dicomcr-data/archive), send a phantom cohort, wait, show the result.
#   bash scripts/node-demo.sh [PHANTOM_FOLDER]      (run scripts/install.sh first)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
cohort=${1:-dicomcr-phantom}
[ -f "$cohort/labels.csv" ] || "$bin/dicomcr" phantom "$cohort" --studies 4

"$bin/dicomcr" serve >dicomcr-node.log 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null || true' EXIT
for _ in $(seq 60); do
  "$bin/dicomcr" echo 127.0.0.1:11112 --aet DICOMCR >/dev/null 2>&1 && break
  sleep 0.5
done
"$bin/dicomcr" echo 127.0.0.1:11112 --aet DICOMCR
"$bin/dicomcr" send "$cohort" --to 127.0.0.1:11112 --aet DICOMCR --calling-aet MG_DEMO
echo "waiting for the node to transcode and archive everything (log: dicomcr-node.log)"
until "$bin/dicomcr" status | grep -q "queue depth: 0"; do sleep 1; done
"$bin/dicomcr" status
echo "archived JPEG 2000 images: $(find dicomcr-data/archive -name '*.dcm' | wc -l) in dicomcr-data/archive"
