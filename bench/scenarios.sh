# Scenarios for bench/run. Sourced by bash; see "Adding a scenario" in bench/README.md.
#
# A scenario is a function `scenario_<name>` (dashes in the name become underscores) that sets the
# S_* variables below. bench/run calls `scenario_reset` first, so a scenario sets only what differs.
# $ASSETS is a directory for generated files, $UPSTREAM_LARGE_BYTES the size of the upstream's
# /large body; both exist before any scenario function runs.

# Scenarios run when --scenarios is not given, in this order.
DEFAULT_SCENARIOS="plain,post-1k,large-64k,conn-churn"

scenario_reset() {
    S_DESC=""              # one line for the report
    S_PATH="/"             # request path (and query)
    S_METHOD="GET"
    S_BODY_FILE=""         # request body; the load generator sets Content-Length
    S_HEADERS=()           # extra request headers, "Name: value"
    S_HEADER_FILE=""       # one "Name: value" per line, rotated: request i carries line i mod n
    S_TLS="no"             # "yes": the client speaks TLS to the proxy (ECDSA P-256, same cert for all)
    S_CONNECTIONS=""       # overrides --connections for this scenario
    S_KIND="load"          # "load": closed- and open-loop runs; "idle": open idle connections
                           # and measure the proxy's memory per connection (no load)
    S_MAX_CONNS=""         # the peers' connection limits (nginx worker_connections, haproxy
                           # maxconn) when the scenario needs more than their bench defaults
    S_RATE=""              # overrides --rate (open loop) for this scenario
    S_LOADGEN_ARGS=()      # extra cflow-load arguments (e.g. --no-resume); wrk cannot take them
    S_NEEDS_CFLOW_LOAD=""  # why the scenario needs cflow-load: with --loadgen wrk it is skipped
    S_UNIT="req"           # what one request stands for in the report: "req" or "handshake"
    S_EXPECT_RESUMED=""    # TLS: "yes"/"no" — the report flags runs whose handshakes did not
                           # (or did) resume, as counted by cflow-load
    S_EXPECT_STATUS="200"  # what the verification request must get through each proxy ...
    S_EXPECT_BODY=""       # ... a substring of the body ...
    S_EXPECT_BYTES=""      # ... or the exact body length
    S_SPEND_FIRST=""       # "yes": one request before the verification, not checked (spends a
                           # rate-limit burst so that the verification sees the refusal)
    S_EXPECT_REFUSALS=""   # a status the measured requests are expected to get (e.g. 429): the
                           # report does not flag them as problems
    S_REJECT_CHECKS=()     # extra curl arguments, one string per check, that must NOT get a 2xx
    S_SETUP=""             # function run once before the first run (generate keys, tokens, files)
    S_SKIP=()              # "peer: reason" — the peer cannot do this scenario (yet)
    # Per-peer snippets, inserted verbatim into the generated configs:
    S_CFLOW_TOP=""         # top-level TOML (e.g. [[issuers]] tables), appended to the file
    S_CFLOW_LOGGING=""     # keys inside [logging] (e.g. access_log)
    S_CFLOW_LISTENER=""    # keys inside the [[listeners]] table (e.g. TLS)
    S_CFLOW_API=""         # keys inside the [[apis]] table (e.g. subscription)
    S_CFLOW_ROUTE=""       # keys inside the [[apis.routes]] table (e.g. auth, scopes)
    S_NGINX_HTTP=""        # directives inside nginx's http {} (e.g. a map)
    S_NGINX_ACCESS_LOG=""  # nginx's access_log for the proxy server (default: off)
    S_NGINX_SERVER=""      # directives inside the proxy's server {}
    S_NGINX_LOCATION=""    # directives inside its location / {}
    S_HAPROXY_GLOBAL=""    # lines in the global section (e.g. tune.* settings)
    S_HAPROXY_FRONTEND=""  # lines in the frontend (e.g. http-request deny unless { ... })
    S_HAPROXY_BACKEND=""   # lines in the backend
}

# GET / — a small fixed body; keep-alive on both sides. The baseline proxy cost.
scenario_plain() {
    S_DESC="GET / → 20-byte body, keep-alive client and upstream connections."
    S_EXPECT_BODY="hello from upstream"
}

# POST with a 1 KiB body: request-body forwarding.
scenario_post_1k() {
    S_DESC="POST /post with a 1 KiB body (Content-Length) → 3-byte body; keep-alive."
    S_PATH="/post"
    S_METHOD="POST"
    S_BODY_FILE="$ASSETS/body-1k.bin"
    S_HEADERS=("Content-Type: application/octet-stream")
    S_EXPECT_BODY="ok"
}

# GET a 64 KiB response: response-body streaming.
scenario_large_64k() {
    S_DESC="GET /large → 64 KiB body (static file on the upstream); keep-alive."
    S_PATH="/large"
    S_EXPECT_BYTES="$UPSTREAM_LARGE_BYTES"
    # nginx's default 4 KiB proxy buffers cost it ~1.8x the CPU per 64 KiB response; give it
    # 64 KiB buffers (Credentialflow moves bodies in 64 KiB chunks). haproxy stays at its default
    # 16 KiB tune.bufsize: 64 KiB measured slower for it here.
    S_NGINX_LOCATION="proxy_buffer_size 16k; proxy_buffers 4 64k; proxy_busy_buffers_size 64k;"
}

# A new client connection per request (accept + close cost); upstream connections stay pooled.
scenario_conn_churn() {
    S_DESC="GET / with \`Connection: close\`: a new client connection per request; upstream keep-alive."
    S_HEADERS=("Connection: close")
    S_EXPECT_BODY="hello from upstream"
}

# --- Not in the default set -------------------------------------------------------------------

# Many concurrent clients: plain at 2 000 connections. Is the service shared evenly (see the
# report's conn p99/p50)?
scenario_many_conns() {
    S_DESC="GET / as in plain, over 2 000 keep-alive client connections."
    S_CONNECTIONS=2000
    S_EXPECT_BODY="hello from upstream"
}

# Idle keep-alive connections: $IDLE_CONNECTIONS connections (bench/run --idle-connections,
# default 10 000), one request each, then idle; the proxy's resident memory before and after, per
# connection. Memory is stable, so the scenario runs in the first round only.
scenario_idle_conns() {
    S_DESC="Idle keep-alive client connections, one GET / each: growth of the proxy's resident memory per connection."
    S_KIND="idle"
    S_EXPECT_BODY="hello from upstream"
    S_MAX_CONNS=$((IDLE_CONNECTIONS + 2000))
}

# TLS scenarios: every peer terminates TLS with the same ECDSA P-256 certificate
# ($ASSETS/tls/cert.pem, key.pem; issued by $ASSETS/tls/ca.pem), TLS 1.2 and 1.3 allowed (the
# client negotiates 1.3), session tickets on. The server side is the same in every TLS scenario;
# the scenarios differ only in what the client does. See "TLS" in bench/README.md.
tls_common() {
    S_TLS="yes"
    S_EXPECT_BODY="hello from upstream"
    S_CFLOW_LISTENER="tls = { certificates = [{ cert = \"$ASSETS/tls/cert.pem\", key = \"$ASSETS/tls/key.pem\" }], min_version = \"1.2\", session_tickets = true }"
    S_SKIP=("direct: the upstream does not speak TLS")
}

# TLS termination on kept-alive connections: record encryption and decryption per request.
scenario_tls() {
    tls_common
    S_DESC="GET / over TLS 1.3 (ECDSA P-256), keep-alive; TLS terminated at the proxy."
}
# The scenario's former name.
scenario_tls_plain() { scenario_tls; }

# Idle TLS connections: as idle-conns, over TLS 1.3 (one full handshake and one request each).
scenario_idle_conns_tls() {
    tls_common
    S_DESC="Idle keep-alive TLS 1.3 client connections, one GET / each: growth of the proxy's resident memory per connection."
    S_KIND="idle"
    S_MAX_CONNS=$((IDLE_CONNECTIONS + 2000))
}

# A new TLS connection per request, full handshake each time (the client never resumes).
scenario_tls_handshake_full() {
    tls_common
    S_DESC="GET / with \`Connection: close\` over TLS 1.3, a full handshake per request (cflow-load --no-resume): handshakes/s = req/s."
    S_HEADERS=("Connection: close")
    S_LOADGEN_ARGS=(--no-resume)
    S_NEEDS_CFLOW_LOAD="wrk can neither turn off nor count TLS session resumption"
    S_UNIT="handshake"
    S_EXPECT_RESUMED="no"
    S_RATE=1000
}

# A new TLS connection per request, resumed from a session ticket of an earlier connection.
scenario_tls_handshake_resumed() {
    tls_common
    S_DESC="GET / with \`Connection: close\` over TLS 1.3, each new connection resumed with a session ticket (PSK + ECDHE): handshakes/s = req/s."
    S_HEADERS=("Connection: close")
    S_NEEDS_CFLOW_LOAD="wrk cannot count TLS session resumption"
    S_UNIT="handshake"
    S_EXPECT_RESUMED="yes"
    S_RATE=1000
}

# --- Authentication ----------------------------------------------------------------------------
#
# Credentialflow authenticates with its own config ([auth], [[issuers]], [[consumers]]); haproxy
# verifies the same tokens with jwt_verify (signature only) and looks API keys up in a map file;
# nginx (open-source) has no JWT verification and looks the API key up in a map. Keys and
# tokens are made once per bench run in $ASSETS/auth by `credentialflow key new` / `jwk new` /
# `token mint` (tokens are minted with the jsonwebtoken library, not by the verifier).

auth_common() {
    S_EXPECT_BODY="hello from upstream"
    S_SETUP="setup_auth"
    S_SKIP=("direct: the upstream does not authenticate")
}

# jwt_common ALG: Bearer tokens of ALG, one token reused.
jwt_common() {
    local alg=$1 lower=${1,,}
    auth_common
    S_HEADER_FILE="$ASSETS/auth/$lower-header.txt"
    S_REJECT_CHECKS=("" "-H @$ASSETS/auth/$lower-tampered.txt")
    S_CFLOW_ROUTE='auth = ["jwt:bench"]'
    S_CFLOW_TOP="[auth]
key_pepper_file = \"$ASSETS/auth/pepper\"

[[issuers]]
name = \"bench\"
issuer = \"https://idp.bench\"
audiences = [\"bench\"]
jwks_file = \"$ASSETS/auth/$lower.jwks\""
    if [[ $alg == HS256 ]]; then
        S_HAPROXY_FRONTEND="http-request deny unless { http_auth_bearer,jwt_verify(\"HS256\",\"$(cat "$ASSETS/auth/hs256.secret" 2>/dev/null || true)\") -m int 1 }"
    else
        S_HAPROXY_FRONTEND="http-request deny unless { http_auth_bearer,jwt_verify(\"$alg\",\"$ASSETS/auth/$lower-pub.pem\") -m int 1 }"
    fi
    S_SKIP+=("nginx: open-source nginx has no JWT verification")
}

# API key in X-API-Key: Credentialflow looks the key id up and checks its HMAC; nginx and
# haproxy look the whole key up in a map.
scenario_api_key() {
    auth_common
    S_DESC="GET / with \`X-API-Key: cf_…\`: key looked up and checked at the proxy (nginx/haproxy: map lookup of the key)."
    S_HEADER_FILE="$ASSETS/auth/api-key-header.txt"
    S_REJECT_CHECKS=("" "-H X-API-Key:cf_wrongwrongwr_0123456789abcdef0123456789abcdef")
    S_CFLOW_ROUTE='auth = ["api_key"]'
    S_CFLOW_TOP="[auth]
key_pepper_file = \"$ASSETS/auth/pepper\"

$(cat "$ASSETS/auth/consumer.toml" 2>/dev/null || true)"
    S_NGINX_HTTP="map_hash_bucket_size 128; map \$http_x_api_key \$api_key_ok { default 0; include $ASSETS/auth/nginx-keys.map; }"
    S_NGINX_SERVER="if (\$api_key_ok = 0) { return 401; }"
    S_HAPROXY_FRONTEND="http-request deny deny_status 401 unless { req.hdr(x-api-key),map_str($ASSETS/auth/haproxy-keys.map) -m found }"
}

scenario_jwt_hs256() {
    jwt_common HS256
    S_DESC="GET / with \`Authorization: Bearer <HS256 JWT>\` (one token reused), verified at the proxy."
}

scenario_jwt_rs256() {
    jwt_common RS256
    S_DESC="GET / with \`Authorization: Bearer <RS256 JWT>\` (RSA-2048, one token reused), verified at the proxy."
}

scenario_jwt_es256() {
    jwt_common ES256
    S_DESC="GET / with \`Authorization: Bearer <ES256 JWT>\` (P-256, one token reused), verified at the proxy."
}

# 10 000 distinct RS256 tokens, request i carries token i mod 10 000: Credentialflow's per-core
# cache holds them all (entries 65 536), haproxy verifies every request.
scenario_jwt_rs256_distinct() {
    jwt_common RS256
    S_DESC="GET / with one of 10 000 distinct RS256 tokens per request (rotated), verified-token cache on."
    S_HEADER_FILE="$ASSETS/auth/rs256-distinct.txt"
}

# Every request verifies its signature: Credentialflow's cache is off.
scenario_jwt_rs256_nocache() {
    jwt_common RS256
    S_DESC="GET / with \`Authorization: Bearer <RS256 JWT>\`, verified-token cache disabled: every request verifies the signature."
    S_CFLOW_TOP="[apis.token_cache]
entries = 0

$S_CFLOW_TOP"
}

# `plain` with an access log written to a file: Credentialflow's JSON record per request,
# nginx's `combined` line (buffered 64 KiB, flushed every second). haproxy logs through syslog
# only, which this bench does not set up. Credentialflow's /metrics is scraped every second
# (from the load generator's CPU) on its admin listener, as Prometheus would.
scenario_plain_logged() {
    S_DESC="GET / as in plain, with every request written to an access log file (and /metrics scraped every second)."
    S_EXPECT_BODY="hello from upstream"
    S_SETUP=plain_logged_scraper
    S_CFLOW_TOP="[admin]
address = \"127.0.0.1:$((PORT_BASE + 9))\"
[[admin.tokens]]
name = \"bench\"
role = \"auditor\"
hash = \"$(cat "$ASSETS/admin-hash" 2>/dev/null || true)\"
[store]
path = \"$TMP/credentialflow-store.db\""
    S_CFLOW_LOGGING="access_log = \"$TMP/credentialflow-access.jsonl\""
    S_NGINX_ACCESS_LOG="$TMP/nginx-access.log combined buffer=64k flush=1s"
    S_SKIP=("haproxy: logs through syslog only (not set up by this bench)" "direct: the upstream does not log")
}

# Makes the admin token and scrapes /metrics once a second for the rest of the bench (a refused
# connection while another peer runs costs nothing).
plain_logged_scraper() {
    local made
    made=$("$CFLOW_BIN" admin token new --role auditor --json)
    python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])' <<<"$made" >"$ASSETS/admin-hash"
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' <<<"$made" >"$ASSETS/admin-token"
    start_pinned "$LOADGEN_CPUS" "$TMP/scraper.log" bash -c \
        "while :; do curl -s -o /dev/null -H 'Authorization: Bearer $(cat "$ASSETS/admin-token")' http://127.0.0.1:$((PORT_BASE + 9))/metrics; sleep 1; done"
}

# A per-client-address rate limit high enough never to refuse: the cost of counting every
# request in a token bucket. nginx: limit_req; haproxy: a stick table with the request rate.
scenario_rate_limited() {
    S_DESC="GET / under a per-client-address rate limit (10⁸ req/s) that never refuses: the cost of the bucket."
    S_EXPECT_BODY="hello from upstream"
    S_CFLOW_ROUTE='[[apis.routes.rate_limits]]
key = ["client_ip"]
rate = "100000000/s"'
    S_NGINX_HTTP="limit_req_zone \$binary_remote_addr zone=perclient:10m rate=100000000r/s; limit_req_status 429;"
    S_NGINX_LOCATION="limit_req zone=perclient burst=1000000 nodelay;"
    S_HAPROXY_FRONTEND="stick-table type ip size 100k expire 10s store http_req_rate(1s)
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100000000 }"
}

# A per-client-address limit of one request an hour: after the first request, every request is
# refused with 429 at the proxy (refusing must cost less than proxying).
scenario_rate_limit_hit() {
    S_DESC="GET / over a per-client-address limit of 1 request/hour: every measured request is refused with 429."
    S_SPEND_FIRST="yes"
    S_EXPECT_STATUS="429"
    S_EXPECT_REFUSALS="429"
    S_CFLOW_ROUTE='[[apis.routes.rate_limits]]
key = ["client_ip"]
rate = "1/h"
burst = 1'
    S_NGINX_HTTP="limit_req_zone \$binary_remote_addr zone=perclient:10m rate=1r/m; limit_req_status 429;"
    S_NGINX_LOCATION="limit_req zone=perclient nodelay;"
    S_HAPROXY_FRONTEND="stick-table type ip size 100k expire 1h store http_req_cnt
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_cnt(0) gt 1 }"
    S_SKIP=("direct: the upstream does not limit")
}

# Authorization on top of a reused RS256 token: an approved subscription, two scopes for GET,
# a path-parameter rule (the token's tenant must be the one in the path) and a client-address
# rule. The route `/tenants/{tenant}/orders` strips its prefix, so the upstream answers `/`.
# Credentialflow only: the peers have no equivalent policy engine.
scenario_policy() {
    jwt_common RS256
    S_DESC="GET /tenants/default/orders with a reused RS256 token, then an access decision: approved subscription, two scopes, a path-parameter rule and a CIDR rule."
    S_PATH="/tenants/default/orders"
    S_HEADER_FILE="$ASSETS/auth/policy-header.txt"
    S_REJECT_CHECKS=("" "-H @$ASSETS/auth/rs256-tampered.txt" "-H @$ASSETS/auth/policy-noscope-header.txt")
    S_CFLOW_API='subscription = "approval"'
    S_CFLOW_ROUTE='auth = ["jwt:bench"]

[[apis.routes]]
path = "/tenants/{tenant}/orders"
upstream = "upstream"
strip_prefix = true
auth = ["jwt:bench"]
scopes = { GET = ["orders:read", "orders:list"] }

[[apis.routes.rules]]
name = "own-tenant"
effect = "deny"
unless = ["claims.tenant_id == path.tenant"]

[[apis.routes.rules]]
name = "local-network"
effect = "allow"
when = ["client_ip in 127.0.0.0/8, 10.0.0.0/8"]'
    S_CFLOW_TOP="$S_CFLOW_TOP

[[consumers]]
id = \"bench-user\"
tenant = \"default\"

[[subscriptions]]
consumer = \"bench-user\"
api = \"bench\"
state = \"approved\""
    S_SKIP=("nginx: no equivalent policy engine" "haproxy: no equivalent policy engine" "direct: the upstream does not authenticate")
}

setup_auth() {
    local dir="$ASSETS/auth" cf="$CFLOW_BIN"
    [[ -f $dir/done ]] && return 0
    mkdir -p "$dir"
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/pepper"
    # A config that only names the pepper, for `key new`.
    printf '[auth]\nkey_pepper_file = "%s"\n[[listeners]]\nname = "x"\naddress = "127.0.0.1:1"\n' "$dir/pepper" >"$dir/keygen.toml"
    "$cf" key new -c "$dir/keygen.toml" --consumer bench --json >"$dir/key.json"
    python3 - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
k = json.load(open(f"{d}/key.json"))
c = k["credential"]
open(f"{d}/consumer.toml", "w").write(
    f'[[consumers]]\nid = "bench"\n[[consumers.credentials]]\nkind = "api_key"\nid = "{c["id"]}"\nhash = "{c["hash"]}"\n')
open(f"{d}/api-key-header.txt", "w").write(f"X-API-Key: {k['key']}\n")
open(f"{d}/nginx-keys.map", "w").write(f'"{k["key"]}" 1;\n')
open(f"{d}/haproxy-keys.map", "w").write(f'{k["key"]} 1\n')
PY
    # Signing keys: RSA from openssl (also the PEM haproxy verifies with), EC and HMAC generated.
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rs256.pem" 2>/dev/null
    "$cf" jwk new --alg RS256 --kid k1 --key "$dir/rs256.pem" --out-private "$dir/rs256-key.pem" --out-jwks "$dir/rs256.jwks" >/dev/null
    "$cf" jwk new --alg ES256 --kid k1 --out-private "$dir/es256.pem" --out-jwks "$dir/es256.jwks" >/dev/null
    openssl pkey -in "$dir/rs256.pem" -pubout -out "$dir/rs256-pub.pem"
    openssl pkey -in "$dir/es256.pem" -pubout -out "$dir/es256-pub.pem"
    # HMAC: a printable secret (haproxy takes the secret itself as jwt_verify's argument).
    head -c 48 /dev/urandom | base64 | tr -d '/+=\n' | head -c 48 >"$dir/hs256.secret"
    python3 - "$dir" <<'PY'
import base64, sys
d = sys.argv[1]
secret = open(f"{d}/hs256.secret", "rb").read()
k = base64.urlsafe_b64encode(secret).rstrip(b"=").decode()
open(f"{d}/hs256.key", "w").write(k + "\n")
open(f"{d}/hs256.jwks", "w").write('{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"%s"}]}\n' % k)
PY
    local claims='{"iss":"https://idp.bench","aud":"bench","sub":"bench-user"}' alg lower key
    for alg in HS256 RS256 ES256; do
        lower=${alg,,}
        key="$dir/$lower.pem"; [[ $alg == HS256 ]] && key="$dir/hs256.key"
        "$cf" token mint --key "$key" --alg "$alg" --kid k1 --claims "$claims" --ttl 24h >"$dir/$lower.token"
        printf 'Authorization: Bearer %s\n' "$(cat "$dir/$lower.token")" >"$dir/$lower-header.txt"
        python3 - "$dir/$lower.token" "$dir/$lower-tampered.txt" <<'PY'
import sys
t = open(sys.argv[1]).read().strip()
h, p, s = t.split(".")
s = s[:-4] + ("AAAA" if not s.endswith("AAAA") else "BBBB")
open(sys.argv[2], "w").write(f"Authorization: Bearer {h}.{p}.{s}\n")
PY
    done
    local policy='{"iss":"https://idp.bench","aud":"bench","sub":"bench-user","tenant_id":"default","scope":"orders:read orders:list"}'
    printf 'Authorization: Bearer %s\n' "$("$cf" token mint --key "$dir/rs256.pem" --alg RS256 --kid k1 --claims "$policy" --ttl 24h)" >"$dir/policy-header.txt"
    local noscope='{"iss":"https://idp.bench","aud":"bench","sub":"bench-user","tenant_id":"default","scope":"orders:read"}'
    printf 'Authorization: Bearer %s\n' "$("$cf" token mint --key "$dir/rs256.pem" --alg RS256 --kid k1 --claims "$noscope" --ttl 24h)" >"$dir/policy-noscope-header.txt"
    "$cf" token mint --key "$dir/rs256.pem" --alg RS256 --kid k1 --claims "$claims" --ttl 24h --count 10000 |
        sed 's/^/Authorization: Bearer /' >"$dir/rs256-distinct.txt"
    touch "$dir/done"
}
