#!/usr/bin/env bash
# Dependency audit: pip-audit over the project's virtualenv, with documented exceptions.
#
#   bash scripts/audit_deps.sh                 # audit .venv (what `make lint` runs)
#   bash scripts/audit_deps.sh -r reqs.txt     # extra arguments go to pip-audit
#
# Exceptions live in scripts/audit_deps.ignore, one vulnerability id per line followed by
# "# why and until when"; an id without a reason is refused. Exit codes: 0 clean (or only
# ignored findings), 1 new findings, 2 pip-audit missing or failed, 3 no vulnerability data
# reachable (only with AUDIT_STRICT=1; otherwise a loud warning and 0, because this
# workplace reaches package indexes but no vulnerability database: see RELIABILITY.md).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
IGNORE_FILE=${AUDIT_IGNORE:-scripts/audit_deps.ignore}
SERVICE=${AUDIT_SERVICE:-pypi}   # or osv
AUDIT=$VENV/bin/pip-audit
if [[ ! -x $AUDIT ]]; then
  echo "audit_deps: $AUDIT not found; install the dev extra (pip-audit is in [dev])" >&2
  exit 2
fi

ignores=()
if [[ -f $IGNORE_FILE ]]; then
  while IFS= read -r line; do
    id=${line%%#*}; id=${id//[[:space:]]/}
    [[ -z $id ]] && continue
    if [[ $line != *"#"* ]]; then
      echo "audit_deps: $IGNORE_FILE: '$id' has no reason (write '# why, until when')" >&2
      exit 2
    fi
    ignores+=(--ignore-vuln "$id")
  done < "$IGNORE_FILE"
fi

args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  # The project's own environment; the editable tunefleet itself is not on any index.
  args=(--path "$(ls -d "$VENV"/lib/python3*/site-packages | head -1)" --skip-editable)
fi

report=$(mktemp)
trap 'rm -f "$report"' EXIT
set +e
"$AUDIT" -s "$SERVICE" -f json -o "$report" --progress-spinner off ${ignores[@]+"${ignores[@]}"} "${args[@]}" 2> "$report.err"
rc=$?
set -e
if [[ ! -s $report ]]; then
  cat "$report.err" >&2; rm -f "$report.err"
  echo "audit_deps: pip-audit failed (exit $rc) before writing a report" >&2
  exit 2
fi
rm -f "$report.err"

"$VENV/bin/python" - "$report" <<'PY'
import json, os, sys
data = json.load(open(sys.argv[1]))
deps = data.get("dependencies", [])
audited = [d for d in deps if "skip_reason" not in d]
skipped = [d for d in deps if "skip_reason" in d]
found = [(d["name"], d["version"], v["id"], v.get("fix_versions", [])) for d in audited for v in d.get("vulns", [])]
print(f"audit_deps: {len(audited)} packages audited, {len(skipped)} skipped, {len(found)} findings")
for name, version, vid, fixes in found:
    print(f"  {name} {version}: {vid} (fixed in {', '.join(fixes) or 'no release yet'})")
if found:
    print("audit_deps: new findings: upgrade, or add the id to scripts/audit_deps.ignore with a reason")
    sys.exit(1)
if deps and not audited:
    msg = "audit_deps: WARNING: no vulnerability data reachable, NOTHING was audited"
    print(msg + f" ({skipped[0]['skip_reason']})", file=sys.stderr)
    sys.exit(3 if os.environ.get("AUDIT_STRICT") == "1" else 0)
PY
