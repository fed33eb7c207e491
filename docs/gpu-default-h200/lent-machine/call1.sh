# call 1 on the lent GPU machine: keep part 1 of the payload, install the study's wheels beside the image's torch
S=/var/tmp/qs; mkdir -p $S/site
cp .xfer1/gguf.xz.part0 .xfer1/conversations.jsonl.gz $S/ || exit 3
t0=$(date +%s)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target $S/site .xfer1/whl/*.whl 2>&1 | tail -3
echo "wheels installed in $(( $(date +%s) - t0 )) s"
export PYTHONPATH=$S/site:$PWD/lib
python3 - <<'PY'
import importlib, pkgutil, torch, transformers
print("torch", torch.__version__, "transformers", transformers.__version__, torch.cuda.get_device_name())
bad = []
import quantstudy
for m in pkgutil.walk_packages(quantstudy.__path__, "quantstudy."):
    try:
        importlib.import_module(m.name)
    except Exception as e:
        bad.append(f"{m.name}: {e!r}")
for n in ["awq", "awq.quantize.quantizer", "awq.models.llama", "awq.modules.linear.gemm", "awq.utils.packing_utils", "scrubadub", "textblob", "papermill", "nbconvert", "ipykernel.kernelapp", "gguf", "datasets", "seaborn", "statsmodels.api", "jinja2"]:
    try:
        importlib.import_module(n)
    except Exception as e:
        bad.append(f"{n}: {e!r}")
from jupyter_client.kernelspec import KernelSpecManager
print("kernels", KernelSpecManager().find_kernel_specs())
print("IMPORT FAILURES:", bad if bad else "none")
PY
ls -la $S | head
