#!/usr/bin/env bash
# Issue 8's reliability run: every fault, security and property test (slow ones included:
# the kill -9 loops, the 2-node Ray cluster of tests/fault/test_ray_multinode.py) and the
# bounded soak. Bounded in time: each test by pytest-timeout, the pytest run and the
# soak by `timeout`. The RESULT lines the fault tests print go to var/reliability/, which
# RELIABILITY.md's numbers come from.
#
#   bash scripts/reliability.sh                  # ~20-30 min on 2 busy cores
#   SOAK_REQUESTS=100 bash scripts/reliability.sh
set -uo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}"
export VLLM_NO_USAGE_STATS=1 RAY_USAGE_STATS_ENABLED=0
OUT=${RELIABILITY_OUT:-var/reliability}
mkdir -p "$OUT"
PY=.venv/bin/python

export TUNEFLEET_KEEP_LOGS="${TUNEFLEET_KEEP_LOGS:-$OUT/logs}"   # the 2-node test keeps its Ray logs there
timeout "${PYTEST_BUDGET_S:-2700}" $PY -m pytest -p no:cacheprovider -q -s -rfEsxX \
  --timeout=1200 --durations=20 tests/fault tests/security tests/property \
  tests/service/test_registry_webhooks.py 2>&1 | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}
grep -ho 'RESULT [a-z_]* .*' "$OUT/pytest.log" > "$OUT/results.txt" || true

timeout "${SOAK_BUDGET_S:-1500}" $PY benchmarks/soak.py --requests "${SOAK_REQUESTS:-300}" \
  --out "$OUT/soak.json" 2> "$OUT/soak.log"
soak_rc=$?

echo "reliability: pytest exit $tests_rc, soak exit $soak_rc; results in $OUT/"
cat "$OUT/results.txt" 2>/dev/null
[ -f "$OUT/soak.json" ] && cat "$OUT/soak.json"
if [ "$tests_rc" -ne 0 ] || [ "$soak_rc" -ne 0 ]; then
  exit 1
fi
