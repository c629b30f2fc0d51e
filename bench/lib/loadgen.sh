# Load-generator command lines for bench/run (wrk or cflow-load). Sourced by bench/run.
# Both are pinned to LOADGEN_CPUS with LOADGEN_THREADS threads.

WRK_MARK="CFLOW_BENCH_WRK_JSON "

# wrk takes method, body and headers from a Lua script. Like cflow-load, a header file is
# rotated: request i carries line i mod n. done() prints exact percentiles as one JSON line that
# benchtool.py parses (the human-readable summary is the fallback).
wrk_script() { # OUT — for the current scenario
    local h
    {
        echo "wrk.method = \"$S_METHOD\""
        if [[ -n $S_BODY_FILE ]]; then
            echo "local f = assert(io.open(\"$S_BODY_FILE\", \"rb\"))"
            echo "wrk.body = f:read(\"*a\")"
            echo "f:close()"
        fi
        cat <<'LUA'
local function add_header(headers, line)
    local name, value = line:match("^([^:]+):%s*(.-)%s*$")
    if name then headers[name] = value end
end
LUA
        for h in "${S_HEADERS[@]}"; do
            printf 'add_header(wrk.headers, [==[%s]==])\n' "$h"
        done
        if [[ -n $S_HEADER_FILE ]]; then
            cat <<LUA
local requests, next_request = {}, 0
init = function(args)
    for line in io.lines("$S_HEADER_FILE") do
        local headers = {}
        for name, value in pairs(wrk.headers) do headers[name] = value end
        add_header(headers, line)
        table.insert(requests, wrk.format(nil, nil, headers))
    end
end
request = function()
    next_request = next_request % #requests + 1
    return requests[next_request]
end
LUA
        fi
        cat <<LUA

done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        '${WRK_MARK}{"requests":%d,"duration_us":%d,' ..
        '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
        '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f}}\n',
        summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max, latency.mean))
end
LUA
    } >"$1"
}

# Sets LOADGEN_CMD (array) for one run.
#   MODE: closed | open;  DURATION: e.g. 10s;  PLOT: svg path or "" (cflow-load only)
# S_LOADGEN_ARGS are cflow-load arguments; bench/run skips scenarios that need them (or set
# S_NEEDS_CFLOW_LOAD) when the load generator is wrk, so they never reach wrk.
loadgen_cmd() { # MODE DURATION URL PLOT
    local mode=$1 duration=$2 url=$3 plot=${4:-} h
    local conns=${S_CONNECTIONS:-$CONNECTIONS}
    if [[ $LOADGEN == wrk ]]; then
        [[ $mode == open ]] && die "wrk has no open-loop mode"
        wrk_script "$TMP/scenario.lua"
        LOADGEN_CMD=(taskset -c "$LOADGEN_CPUS" wrk -t "$LOADGEN_THREADS" -c "$conns" -d "$duration"
            --latency -s "$TMP/scenario.lua" "$url")
        return
    fi
    # --warmup 0s: bench/run warms up with a separate run, so that the load generator's measured
    # window and the window of the proxy's CPU-time samples are the same.
    LOADGEN_CMD=(taskset -c "$LOADGEN_CPUS" "$CFLOW_LOAD" -c "$conns" -d "$duration" --warmup 0s
        -t "$LOADGEN_THREADS" --cpus "$LOADGEN_CPUS" -m "$S_METHOD" --json)
    for h in "${S_HEADERS[@]}"; do LOADGEN_CMD+=(-H "$h"); done
    [[ -n $S_HEADER_FILE ]] && LOADGEN_CMD+=(--header-file "$S_HEADER_FILE")
    [[ -n $S_BODY_FILE ]] && LOADGEN_CMD+=(--body-file "$S_BODY_FILE")
    [[ $S_TLS == yes ]] && LOADGEN_CMD+=(--ca "$ASSETS/tls/ca.pem")
    LOADGEN_CMD+=("${S_LOADGEN_ARGS[@]}")
    [[ $mode == open ]] && LOADGEN_CMD+=(--rate "${S_RATE:-$RATE}")
    [[ -n $plot ]] && LOADGEN_CMD+=(--plot "$plot")
    LOADGEN_CMD+=("$url")
}
