#!/usr/bin/env bash
# Regenerate dashboard.schema.json: the JSON schema of a Grafana dashboard (the classic JSON
# model that "Import dashboard" takes), made from the TypeScript types that Grafana publishes in
# @grafana/schema. tests/unit/test_dashboard.py checks goodsd.json against it.
#
#   packaging/grafana/update-schema.sh [VERSION]     (default: the version below)
set -euo pipefail
version=${1:-13.2.3}
here=$(dirname "$(readlink -f "$0")")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
npm init -y > /dev/null
npm install --silent --no-audit --no-fund "@grafana/schema@$version" ts-json-schema-generator@2
npx ts-json-schema-generator --no-type-check --type Dashboard \
    --path node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts \
    --out "$here/dashboard.schema.json"
echo "dashboard.schema.json from @grafana/schema $version"
