# Call 1 on the lent GPU machine (carry .xfer1): keep part 1 of the payload, install the wheels
# beside the image's torch, and check that every module of the study imports.
S=/var/tmp/qs; mkdir -p $S/site
cp .xfer1/gguf.xz.part0 .xfer1/conversations.jsonl.gz $S/ || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $S/site .xfer1/whl/*.whl 2>&1 | tail -3
export PYTHONPATH=$S/site:$PWD/lib
python3 -W ignore - <<'PY'
import importlib, pkgutil, torch, quantstudy
bad = []
for m in [x.name for x in pkgutil.walk_packages(quantstudy.__path__, "quantstudy.")] + [
    "awq.quantize.quantizer", "awq.modules.linear.gemm", "scrubadub", "papermill", "nbconvert", "ipykernel.kernelapp", "gguf"]:
    try:
        importlib.import_module(m)
    except Exception as e:
        bad.append(f"{m}: {e!r}")
print(torch.__version__, torch.cuda.get_device_name(), "IMPORT FAILURES:", bad or "none")
PY
