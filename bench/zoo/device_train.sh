#!/bin/bash
# Train the zoo on a lent GPU machine (no llama.cpp, no network there), after the base GGUF's
# parts were copied to /root/zb by earlier calls (each call carries at most 64 MiB):
#   here:  split -b 55000000 -d -a 1 BASE.gguf .zoo_dev/parts/p; make_zoo.py prepare --out .zoo_dev/zoo
#   there: bash bench/zoo/device_train.sh   (carrying .zoo_dev/parts/p8, .zoo_dev/zoo and .whl)
# Then bring $OUT's parts back and run `make_zoo.py export --out ...` here.
set -euo pipefail
mkdir -p /root/zb /root/models
cp .zoo_dev/parts/p8 /root/zb/
cat /root/zb/p? > /root/models/qwen2.5-coder-0.5b-instruct.gguf
(cd /root/models && sha256sum -c <(sed 's#/work/models/##' "$OLDPWD/.zoo_dev/zoo/base.sha256"))
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 NANOCOMMANDER_ZOO_MODELS=/root/models
nvidia-smi -L
python3 -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
time python3 bench/zoo/make_zoo.py train --out .zoo_dev/zoo 2>&1 | grep -v "^tune:" | tee $OUT/train.log | tail -40
mkdir -p /root/ret
tar -C .zoo_dev/zoo -cf /root/ret/zoo.tar trained.json $(cd .zoo_dev/zoo && ls *.peft.* *.train/metrics.jsonl 2>/dev/null)
(cd /root/ret && split -b 15000000 -d -a 1 zoo.tar part && sha256sum zoo.tar > zoo.sha256 && ls -la)
cp /root/ret/zoo.sha256 $OUT/
for f in /root/ret/part0 /root/ret/part1 /root/ret/part2 /root/ret/part3; do [ -f $f ] && cp $f $OUT/; done
ls -la $OUT
