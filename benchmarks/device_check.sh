#!/usr/bin/env bash
# The GPU check: the CUDA tests (pytest -m cuda: bf16 training step, compile on CUDA, DDP with
# one GPU, the sampler in bf16 vs fp32 on the same seeds, guidance hooks under compile), then
# training images/s and peak memory of img512-xs and img512-s at batch 32 and 64 (bf16, eager
# and compiled) and generation images/s unguided and with autoguidance (benchmarks/throughput.py).
# Writes one JSON and prints a table; sized for under 8 minutes on one GPU.
#
#   bash benchmarks/device_check.sh [--out FILE]        # on a CUDA machine (default FILE: $OUT or . / device_check.json)
#   bash benchmarks/device_check.sh --cpu [--out FILE]  # tiny sizes on the CPU: checks that it parses and runs (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
cpu=0
out="${OUT:-.}/device_check.json"
while (($#)); do
    case $1 in
        --cpu) cpu=1 ;;
        --out) out=$2; shift ;;
        *) echo "device_check.sh: unknown argument $1 (use --cpu, --out FILE)" >&2; exit 2 ;;
    esac
    shift
done
python=${PYTHON:-python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export WANDB_MODE=offline PYTHONUNBUFFERED=1

start=$(date +%s)
set +e
"$python" -m pytest -m cuda -q -p no:cacheprovider --timeout=240 -o addopts="" tests/test_cuda.py > "$work/tests.log" 2>&1
tests_status=$?
set -e
tests_seconds=$(($(date +%s) - start))

if ((cpu)); then
    "$python" benchmarks/throughput.py --cpu --out "$work/throughput.json" --budget 600 --steps 2
else
    "$python" benchmarks/throughput.py --out "$work/throughput.json" --budget 330 --steps 5
fi

"$python" - "$work" "$out" "$tests_status" "$tests_seconds" <<'PY'
import json, re, sys
from pathlib import Path
work, out, status, seconds = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
log = (work / "tests.log").read_text()
summary = next((line for line in reversed(log.splitlines()) if re.search(r"\d+ (passed|failed|skipped|deselected|error)", line)), "")
counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|deselected|errors?)", summary)}
report = {"cuda_tests": {"exit_status": status, "seconds": seconds, "summary": summary.strip("= "), **counts, "log_tail": log[-3000:]},
          **json.loads((work / "throughput.json").read_text())}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(report, indent=1) + "\n")
print(f"cuda tests: {report['cuda_tests']['summary'] or 'no summary'} (exit {status}, {seconds} s)")
print(f"wrote {out}")
PY
