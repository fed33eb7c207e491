# Here: move the tracked files the GPU run does not need (or gets from the payload) out of the
# working tree for the device calls; `bash gpu-run/strip.sh restore` puts them back.
cd /work/main
F="models/demo-support-lm/model.safetensors data/demo/conversations.jsonl data/demo/task_items.jsonl tests/fixtures/rollout/logs.csv"
if [ "$1" = restore ]; then git checkout -- $F && git status --short; exit; fi
mkdir -p /tmp/stripped && for f in $F; do mv $f /tmp/stripped/$(echo $f | tr / _); done
git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1
