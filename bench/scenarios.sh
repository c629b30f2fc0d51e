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
    S_RATE=""              # overrides --rate (open loop) for this scenario
    S_LOADGEN_ARGS=()      # extra cflow-load arguments (e.g. --no-resume); wrk cannot take them
    S_NEEDS_CFLOW_LOAD=""  # why the scenario needs cflow-load: with --loadgen wrk it is skipped
    S_UNIT="req"           # what one request stands for in the report: "req" or "handshake"
    S_EXPECT_RESUMED=""    # TLS: "yes"/"no" — the report flags runs whose handshakes did not
                           # (or did) resume, as counted by cflow-load
    S_EXPECT_STATUS="200"  # what the verification request must get through each proxy ...
    S_EXPECT_BODY=""       # ... a substring of the body ...
    S_EXPECT_BYTES=""      # ... or the exact body length
    S_REJECT_CHECKS=()     # extra curl arguments, one string per check, that must NOT get a 2xx
    S_SETUP=""             # function run once before the first run (generate keys, tokens, files)
    S_SKIP=()              # "peer: reason" — the peer cannot do this scenario (yet)
    # Per-peer snippets, inserted verbatim into the generated configs:
    S_CFLOW_TOP=""         # top-level TOML (e.g. [[issuers]] tables), appended to the file
    S_CFLOW_LISTENER=""    # keys inside the [[listeners]] table (e.g. TLS)
    S_CFLOW_ROUTE=""       # keys inside the [[apis.routes]] table (e.g. auth, scopes)
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

# JWT RS256 verification (signature only) in front of GET /. haproxy verifies with jwt_verify;
# nginx (open-source) cannot verify JWTs; Credentialflow has no JWT verification yet.
scenario_jwt_rs256() {
    S_DESC="GET / with \`Authorization: Bearer <RS256 JWT>\`, signature verified at the proxy."
    S_SETUP="setup_jwt_rs256"
    S_HEADER_FILE="$ASSETS/jwt/header-valid.txt"
    S_EXPECT_BODY="hello from upstream"
    S_REJECT_CHECKS=("" "-H @$ASSETS/jwt/header-tampered.txt")
    S_HAPROXY_FRONTEND="http-request deny unless { http_auth_bearer,jwt_verify(\"RS256\",\"$ASSETS/jwt/pub.pem\") -m int 1 }"
    S_SKIP=("credentialflow: JWT verification not implemented yet"
            "nginx: open-source nginx has no JWT verification"
            "direct: the upstream does not verify tokens")
}

setup_jwt_rs256() {
    local dir="$ASSETS/jwt"
    mkdir -p "$dir"
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/key.pem" 2>/dev/null
    openssl pkey -in "$dir/key.pem" -pubout -out "$dir/pub.pem"
    python3 - "$dir" <<'PY'
import base64, json, subprocess, sys, time
d = sys.argv[1]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
body = b64(json.dumps({"sub": "bench", "aud": "bench", "exp": int(time.time()) + 86400}).encode())
signing_input = f"{head}.{body}".encode()
sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", f"{d}/key.pem"],
                     input=signing_input, capture_output=True, check=True).stdout
token = f"{head}.{body}.{b64(sig)}"
tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
open(f"{d}/header-valid.txt", "w").write(f"Authorization: Bearer {token}\n")
open(f"{d}/header-tampered.txt", "w").write(f"Authorization: Bearer {tampered}\n")
PY
}
