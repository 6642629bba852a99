#!/usr/bin/env bash
# The "current" tables of docs/performance.md, from one run on one GPU machine (about 8-9 minutes on an
# H200): what a trial costs against its floor for every proxy and space on the 13M, 1B and 8B shapes,
# rounds of trials scored together, and the GPU's utilisation with one and two workers (one on 8B).
#
#     bash benchmarks/performance.sh                       # writes docs/performance.md (and its JSON)
#     PERF_STEP_TIMEOUT=300 bash benchmarks/performance.sh /tmp/performance.md
#
# Each step rewrites only its own marked section (benchmarks/sections.py); PERF_STEP_TIMEOUT bounds
# each step in seconds (0, the default: no bound). The orchestration table is the CPU's
# (benchmarks/orchestration.py), measured where the service runs.
set -euo pipefail
out=${1:-docs/performance.md}
step_timeout=${PERF_STEP_TIMEOUT:-0}

step() {
    local started=$SECONDS
    echo "== $*"
    timeout "$step_timeout" python "$@" --out "$out" || echo "!! step failed or ran out of time: $*"
    echo "== $((SECONDS - started)) s"
}

step benchmarks/throughput.py --shapes models/ref-llama-13m,llama-1b,llama-8b --proxies tracenas,kl \
    --spaces per_layer,compact --trials 30 --tokens 4096 --seq-len 1024 --section "Current: trial against floor"
step benchmarks/throughput.py --shapes models/ref-llama-13m,llama-1b --proxies tracenas --spaces per_layer \
    --executions replay --batches 1,4 --trials 32 --tokens 4096 --seq-len 1024 \
    --section "Current: trials scored together"
step benchmarks/scaling.py --shape llama-1b --proxy tracenas --space per_layer --workers 1,2 --gpus 0 --trials 200
step benchmarks/scaling.py --shape models/ref-llama-13m --proxy tracenas --space per_layer --workers 1,2 --gpus 0 \
    --trials 400
step benchmarks/scaling.py --shape llama-8b --proxy tracenas --space per_layer --workers 1 --gpus 0 --trials 100
