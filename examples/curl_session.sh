#!/usr/bin/env bash
# A REST session with curl: publish a report from a STIX bundle, list what another node may see,
# read one report, recall it. Needs BROKER_URL, PUBLISHER_TOKEN, READER_TOKEN (and, over TLS,
# CURL_CA=path/to/ca.pem); jq is not needed.
#   BROKER_URL=http://127.0.0.1:8080 PUBLISHER_TOKEN=abk_... READER_TOKEN=abk_... examples/curl_session.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ca=()
[ -n "${CURL_CA:-}" ] && ca=(--cacert "$CURL_CA")

# The body: a label, topics, and the bundle as the payload (python builds the JSON, no quoting traps).
body=$(python3 -c '
import json, sys
bundle = json.load(open(sys.argv[1]))
print(json.dumps({"label": {"classification": "CONFIDENTIAL", "releasable_to": ["NATO"], "caveats": []},
                  "topics": ["phishing"], "payload": bundle}))' "$here/indicator_bundle.json")

receipt=$(curl -sS --fail-with-body "${ca[@]}" -X POST "$BROKER_URL/v1/reports" \
  -H "Authorization: Bearer $PUBLISHER_TOKEN" -H 'Content-Type: application/json' -d "$body")
echo "published: $receipt"
id=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["id"])' "$receipt")

echo "the reader's listing:"
curl -sS --fail-with-body "${ca[@]}" "$BROKER_URL/v1/reports?topics=phishing" -H "Authorization: Bearer $READER_TOKEN"
echo
echo "the report by id:"
curl -sS --fail-with-body "${ca[@]}" "$BROKER_URL/v1/reports/$id" -H "Authorization: Bearer $READER_TOKEN"
echo
echo "recalled:"
curl -sS --fail-with-body "${ca[@]}" -X POST "$BROKER_URL/v1/reports/$id/recall" -H "Authorization: Bearer $PUBLISHER_TOKEN"
echo
