#!/bin/bash
# Here: move the tracked files the GPU run does not need (or gets from the payload) out of the tree
# for the device calls; `strip.sh restore` puts them back.
set -euo pipefail
cd "$(dirname "$0")/../.."
F="models/demo-support-lm/model.safetensors data/demo/conversations.jsonl data/demo/task_items.jsonl tests/fixtures/rollout/logs.csv"
if [ "${1:-}" = restore ]; then
  for d in /tmp/stripped/docs/*; do mv "$d" docs/; done
  git checkout -- $F && git status --short
  exit
fi
mkdir -p /tmp/stripped/docs
for f in $F; do mv $f /tmp/stripped/$(echo $f | tr / _); done
for d in docs/*; do [ "$d" = docs/lent-gpu ] || mv "$d" /tmp/stripped/docs/; done
git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 || true  # du complains of the moved files
