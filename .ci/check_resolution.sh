#!/usr/bin/env bash
# Checks that constraints.txt + requirements-test.txt resolve against PyPI alone (no local
# wheels, no pip config) and that the resolver picks exactly each pinned version.
# Needs network access to pypi.org; .ci/run runs it where pypi.org is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(mktemp)
trap 'rm -f "$report"' EXIT
python3 -m pip install --isolated --dry-run --ignore-installed --quiet \
  --index-url https://pypi.org/simple -c constraints.txt -r requirements-test.txt --report "$report"
python3 - "$report" <<'PY'
import json, re, sys
picked = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
          for i in json.load(open(sys.argv[1]))["install"]}
bad = []
for line in open("constraints.txt"):
    m = re.match(r"\s*([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        name, want = m.group(1).lower().replace("_", "-"), m.group(2)
        if picked.get(name) != want:
            bad.append(f"{name}: pinned {want}, resolved {picked.get(name)}")
if bad:
    sys.exit("constraints.txt does not resolve as pinned:\n  " + "\n  ".join(bad))
print(f"constraints.txt resolves against PyPI: {len(picked)} packages, every pin as pinned")
PY
