# The upstream and the peers for bench/run: config generation, start, readiness, stop.
# Sourced by bench/run; uses its globals (TMP, ROOT, ASSETS, ports, CPU lists, WORKERS, S_*).
# Every process started here is recorded in STARTED_PIDS and killed by the EXIT trap in bench/run.

# Ports: the upstream on BASE, the peers on BASE+1.. (bench/run --port-base, default 18080).
set_ports() { # BASE
    UPSTREAM_PORT=$1
    declare -gA PEER_PORT=([credentialflow]=$(($1 + 1)) [nginx]=$(($1 + 2)) [haproxy]=$(($1 + 3))
        [direct]=$1)
}
UPSTREAM_BODY="hello from upstream"
UPSTREAM_LARGE_BYTES=65536
STARTED_PIDS=()

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# "0,2-3" → "0 2 3"
cpu_list_expand() {
    local part out=()
    IFS=',' read -ra parts <<<"$1"
    for part in "${parts[@]}"; do
        if [[ $part == *-* ]]; then
            out+=($(seq "${part%-*}" "${part#*-}"))
        else
            out+=("$part")
        fi
    done
    echo "${out[@]}"
}

# nginx's CPU mask: one binary digit per CPU, CPU 0 rightmost.
nginx_cpu_mask() {
    local cpu max=0 mask=""
    local cpus=($(cpu_list_expand "$1"))
    for cpu in "${cpus[@]}"; do ((cpu > max)) && max=$cpu; done
    for ((cpu = max; cpu >= 0; cpu--)); do
        if [[ " ${cpus[*]} " == *" $cpu "* ]]; then mask+="1"; else mask+="0"; fi
    done
    echo "$mask"
}

port_free() { ! ss -Hltn "sport = :$1" | grep -q .; }

wait_listening() { # PORT PID — until PORT listens (false if PID exits or after 10 s)
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$2" 2>/dev/null || return 1
        ss -Hltn "sport = :$1" | grep -q . && return 0
        sleep 0.1
    done
    return 1
}

stop_pid() { # PID — TERM, then KILL after 5 s
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Runs "$@" in the background pinned to CPUS; sets LAST_PID.
start_pinned() { # CPUS LOGFILE CMD...
    local cpus=$1 logfile=$2
    shift 2
    taskset -c "$cpus" "$@" >"$logfile" 2>&1 &
    LAST_PID=$!
    STARTED_PIDS+=("$LAST_PID")
}

# nginx temp paths: Debian's compiled-in defaults point at /var/lib/nginx; keep everything in dir.
nginx_common_paths() { # DIR
    cat <<EOF
    client_body_temp_path $1/client_body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}

# --------------------------------------------------------------------------- upstream

upstream_start() {
    local dir="$TMP/upstream"
    mkdir -p "$dir/www"
    head -c "$UPSTREAM_LARGE_BYTES" /dev/zero | tr '\0' 'x' >"$dir/www/large"
    cat >"$dir/nginx.conf" <<EOF
# Upstream for all peers: 1 worker, fixed bodies, no per-connection request cap, no access log.
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 16384;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 8000; }
http {
$(nginx_common_paths "$dir")
    access_log off;
    default_type text/plain;
    sendfile on;
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    server {
        listen 127.0.0.1:$UPSTREAM_PORT backlog=4096;
        location = / { return 200 "$UPSTREAM_BODY\n"; }
        # return discards (reads) the request body before answering.
        location = /post { client_max_body_size 1m; return 200 "ok\n"; }
        location = /large { root $dir/www; }
    }
}
EOF
    port_free "$UPSTREAM_PORT" || die "port $UPSTREAM_PORT is in use (pick other ports with --port-base)"
    start_pinned "$UPSTREAM_CPUS" "$dir/stderr.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
    UPSTREAM_PID=$LAST_PID
    wait_listening "$UPSTREAM_PORT" "$UPSTREAM_PID" || die "upstream nginx did not start: $(cat "$dir/stderr.log" "$dir/error.log" 2>/dev/null)"
}

# --------------------------------------------------------------------------- peers

# A private CA and a server certificate (ECDSA P-256) for 127.0.0.1/localhost, shared by all peers.
tls_assets() {
    local dir="$ASSETS/tls"
    [[ -f $dir/cert.pem ]] && return 0
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=bench CA" -keyout "$dir/ca-key.pem" -out "$dir/ca.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=localhost" -keyout "$dir/key.pem" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
        -CAcreateserial -days 30 -extfile "$dir/ext.cnf" -out "$dir/cert.pem" 2>/dev/null
    cat "$dir/cert.pem" "$dir/key.pem" >"$dir/combined.pem"
}

config_credentialflow() { # DIR PORT
    cat >"$1/credentialflow.toml" <<EOF
# Credentialflow for bench/run.
[gateway]
workers = $WORKERS
pin = true
drain_timeout = "1s"

[logging]
level = "warn"
$S_CFLOW_LOGGING

[limits]
max_body_bytes = 104857600
idle_timeout = "300s"

[[listeners]]
name = "bench"
address = "127.0.0.1:$2"
$S_CFLOW_LISTENER

[[upstreams]]
name = "upstream"
targets = ["127.0.0.1:$UPSTREAM_PORT"]
keepalive = 64
keepalive_timeout = "240s"

[[apis]]
name = "bench"
$S_CFLOW_API

[[apis.routes]]
path = "/"
upstream = "upstream"
$S_CFLOW_ROUTE

$S_CFLOW_TOP
EOF
}

config_nginx() { # DIR PORT
    local listen="listen 127.0.0.1:$2 backlog=4096"
    local tls=""
    if [[ $S_TLS == yes ]]; then
        listen+=" ssl"
        # Resumption as nginx is deployed: stateless tickets (the default, stated) and a session
        # cache shared by the workers.
        tls="ssl_certificate $ASSETS/tls/cert.pem;
        ssl_certificate_key $ASSETS/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets on;
        ssl_session_cache shared:SSL:10m;"
    fi
    cat >"$1/nginx.conf" <<EOF
# nginx peer for bench/run.
daemon off;
master_process on;
worker_processes $WORKERS;
worker_cpu_affinity auto $(nginx_cpu_mask "$PROXY_CPUS");
worker_rlimit_nofile $(( ${S_MAX_CONNS:-8000} * 2 > 16384 ? ${S_MAX_CONNS:-8000} * 2 : 16384 ));
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections ${S_MAX_CONNS:-8000}; }
http {
$(nginx_common_paths "$1")
    access_log ${S_NGINX_ACCESS_LOG:-off};
    keepalive_timeout 300s;
    keepalive_requests 1000000000;
    client_max_body_size 100m;
    upstream upstream {
        server 127.0.0.1:$UPSTREAM_PORT;
        keepalive 64;
        keepalive_requests 1000000000;
        keepalive_timeout 240s;
    }
    $S_NGINX_HTTP
    server {
        $listen;
        $tls
        $S_NGINX_SERVER
        location / {
            proxy_pass http://upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_max_temp_file_size 0;
            $NGINX_SAME_HEADERS
            $S_NGINX_LOCATION
        }
    }
}
EOF
}

config_haproxy() { # DIR PORT
    local bind="bind 127.0.0.1:$2"
    # TLS: haproxy's defaults for resumption — tickets on (no "no-tls-tickets"), ticket keys made
    # at start-up and shared by the threads, and its shared session cache (tune.ssl.cachesize
    # 20000 entries, tune.ssl.lifetime 300s).
    [[ $S_TLS == yes ]] && bind+=" ssl crt $ASSETS/tls/combined.pem ssl-min-ver TLSv1.2"
    local maxconn=${S_MAX_CONNS:-4000} cap
    cap=$(peer_connection_cap haproxy)
    ((maxconn > cap + 100)) && maxconn=$((cap + 100))
    cat >"$1/haproxy.cfg" <<EOF
# haproxy peer for bench/run. No log lines: nothing is logged.
global
    nbthread $WORKERS
    cpu-map auto:1/1-$WORKERS $(cpu_list_expand "$PROXY_CPUS")
    maxconn $maxconn
    $S_HAPROXY_GLOBAL

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    timeout http-keep-alive 300s

frontend bench
    $bind
    $S_HAPROXY_FRONTEND
    $HAPROXY_SAME_HEADERS_FRONTEND
    default_backend upstream

backend upstream
    http-reuse always
    $S_HAPROXY_BACKEND
    server upstream 127.0.0.1:$UPSTREAM_PORT
EOF
}

# With --same-headers the peers also add what Credentialflow adds on the way through
# (X-Forwarded-For/-Proto/-Host and X-Request-Id upstream, X-Request-Id to the client).
set_same_headers() {
    NGINX_SAME_HEADERS=""
    HAPROXY_SAME_HEADERS_FRONTEND=""
    [[ $SAME_HEADERS == yes ]] || return 0
    NGINX_SAME_HEADERS='proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;'
    HAPROXY_SAME_HEADERS_FRONTEND='option forwardfor
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt:%pid
    http-request set-header X-Request-Id %[unique-id]
    http-response set-header X-Request-Id %[unique-id]'
}

# How many client connections PEER can hold open at once on this machine ("" = no limit of its
# own). haproxy reserves two descriptors per connection (client and server side) and does not
# start when maxconn needs more than the hard descriptor limit allows.
peer_connection_cap() { # PEER
    local hard
    hard=$(ulimit -Hn)
    if [[ $1 == haproxy && $hard != unlimited ]]; then
        echo $(((hard - 100) / 2 - 100))
    else
        echo 1000000000
    fi
}

# Starts PEER for the current scenario; sets PEER_PID, PEER_URL. Returns 1 when it did not start.
peer_start() { # PEER
    local peer=$1 port=${PEER_PORT[$1]} dir="$TMP/peers/$1"
    local scheme=http
    [[ $S_TLS == yes ]] && scheme=https
    PEER_URL="$scheme://127.0.0.1:$port$S_PATH"
    if [[ $peer == direct ]]; then
        PEER_PID=$UPSTREAM_PID
        return 0
    fi
    mkdir -p "$dir"
    port_free "$port" || die "port $port is in use (pick other ports with --port-base)"
    case $peer in
    credentialflow)
        config_credentialflow "$dir" "$port"
        "$CFLOW_BIN" check -c "$dir/credentialflow.toml" >"$dir/check.log" 2>&1 ||
            { log "credentialflow config invalid: $(cat "$dir/check.log")"; return 1; }
        start_pinned "$PROXY_CPUS" "$dir/stderr.log" "$CFLOW_BIN" run -c "$dir/credentialflow.toml"
        ;;
    nginx)
        config_nginx "$dir" "$port"
        start_pinned "$PROXY_CPUS" "$dir/stderr.log" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
        ;;
    haproxy)
        config_haproxy "$dir" "$port"
        start_pinned "$PROXY_CPUS" "$dir/stderr.log" haproxy -db -f "$dir/haproxy.cfg"
        ;;
    *) die "unknown peer $peer" ;;
    esac
    PEER_PID=$LAST_PID
    if ! wait_listening "$port" "$PEER_PID"; then
        log "$peer did not start: $(tail -n 20 "$dir/stderr.log" "$dir/error.log" 2>/dev/null)"
        stop_pid "$PEER_PID"
        return 1
    fi
}

peer_stop() { # PEER
    [[ $1 == direct ]] && return 0
    stop_pid "$PEER_PID"
    local port=${PEER_PORT[$1]} i
    for ((i = 0; i < 50; i++)); do
        port_free "$port" && return 0
        sleep 0.1
    done
}

# --------------------------------------------------------------------------- verification

# curl arguments for the scenario's request (without the header file when $1 = bare).
scenario_curl_args() {
    CURL_ARGS=(-sS --max-time 5 -o "$TMP/verify.body" -w '%{http_code}')
    [[ $S_TLS == yes ]] && CURL_ARGS+=(--cacert "$ASSETS/tls/ca.pem")
    [[ $S_METHOD != GET ]] && CURL_ARGS+=(-X "$S_METHOD")
    local h
    for h in "${S_HEADERS[@]}"; do CURL_ARGS+=(-H "$h"); done
    # The load generators rotate over the header file's lines; verify with the first one.
    [[ -n $S_HEADER_FILE && ${1:-} != bare ]] && CURL_ARGS+=(-H "$(head -n 1 "$S_HEADER_FILE")")
    [[ -n $S_BODY_FILE ]] && CURL_ARGS+=(--data-binary "@$S_BODY_FILE")
    return 0
}

# Checks that PEER_URL answers the scenario's request as expected, twice (the second on a
# reused connection unless the scenario closes it), and that every S_REJECT_CHECKS request is refused.
peer_verify() { # PEER
    local code body_bytes check extra
    scenario_curl_args
    if [[ $S_SPEND_FIRST == yes ]]; then
        curl "${CURL_ARGS[@]}" "$PEER_URL" >/dev/null || true
    fi
    for check in 1 2; do
        code=$(curl "${CURL_ARGS[@]}" "$PEER_URL") || { log "$1: curl failed"; return 1; }
        if [[ $code != "$S_EXPECT_STATUS" ]]; then
            log "$1: expected status $S_EXPECT_STATUS, got $code: $(head -c 300 "$TMP/verify.body")"
            return 1
        fi
        if [[ -n $S_EXPECT_BODY ]] && ! grep -qF "$S_EXPECT_BODY" "$TMP/verify.body"; then
            log "$1: body lacks '$S_EXPECT_BODY': $(head -c 300 "$TMP/verify.body")"
            return 1
        fi
        body_bytes=$(stat -c %s "$TMP/verify.body")
        if [[ -n $S_EXPECT_BYTES && $body_bytes != "$S_EXPECT_BYTES" ]]; then
            log "$1: expected $S_EXPECT_BYTES body bytes, got $body_bytes"
            return 1
        fi
    done
    for extra in "${S_REJECT_CHECKS[@]}"; do
        scenario_curl_args bare
        # shellcheck disable=SC2086  # extra is a list of curl arguments
        code=$(curl "${CURL_ARGS[@]}" $extra "$PEER_URL") || true
        if [[ $code == 2* ]]; then
            log "$1: request with [${extra:-no credentials}] got $code, expected a refusal"
            return 1
        fi
    done
}
