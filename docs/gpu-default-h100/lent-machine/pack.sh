# Runs on the lent GPU machine at the end of a call: the run folder without model weights.
tar -C outputs -czf $OUT/run.tar.gz --exclude='*.safetensors' --exclude='*.gguf' --exclude='*.bin' gpu-default 2>/dev/null
ls -la $OUT
