#!/usr/bin/env python3
"""Helpers for bench/run and bench/loadgen-vs-wrk.

Subcommands:
  measure   sample the CPU time of process trees, run a command, sample again (one window)
  rss       resident memory of a process tree, in KiB
  idle      open N keep-alive connections (one request each, then idle) and report the growth
            of a process tree's resident memory per connection
  parse     turn load-generator output (cflow-load --json, or wrk) into one JSON object
  record    one (scenario, peer, round) record from the measured phases
  combine   meta + run records → the results JSON
  meta      the header of a result: machine, versions, run parameters
  loadgen-record, loadgen-combine   the same for bench/loadgen-vs-wrk
  report    render the Markdown table from a results JSON file
  loadgen-table   render the loadgen-vs-wrk Markdown table

CPU time of a process tree is the sum over every thread of every process in the tree of
se.sum_exec_runtime (/proc/PID/task/TID/sched, nanosecond resolution); when that file is not
readable it falls back to utime+stime (/proc/PID/task/TID/stat fields 14 and 15, clock ticks).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- process trees

def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses: split after the last ')'.
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid):
    """pid and all its descendants."""
    kids = children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def task_cpu_ns(pid, tid):
    try:
        with open(f"/proc/{pid}/task/{tid}/sched") as f:
            for line in f:
                if line.startswith("se.sum_exec_runtime"):
                    ms = float(line.split(":")[1])
                    return int(ms * 1_000_000)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/task/{tid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2:].split()
        # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
        ticks = int(fields[11]) + int(fields[12])
        return ticks * 1_000_000_000 // CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0


def tree_cpu_ns(pids):
    total = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            total += task_cpu_ns(pid, tid)
    return total


def tree_rss_kib(pid):
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cmd_measure(args):
    """Runs the command after `--`; writes CPU deltas (ns) of the named trees and the command's own
    rusage to --out. The command's stdout/stderr pass through."""
    groups = {}
    for spec in args.tree:
        name, pid = spec.split("=", 1)
        groups[name] = tree(int(pid))
    before = {name: tree_cpu_ns(pids) for name, pids in groups.items()}
    t0 = time.monotonic()
    proc = subprocess.Popen(args.command)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.monotonic() - t0
    after = {name: tree_cpu_ns(pids) for name, pids in groups.items()}
    result = {
        "wall_s": wall,
        "cmd_user_s": ru.ru_utime,
        "cmd_sys_s": ru.ru_stime,
        "cmd_exit": os.waitstatus_to_exitcode(status),
        "cpu_ns": {name: after[name] - before[name] for name in groups},
        "pids": groups,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)
    return result["cmd_exit"]


def cmd_rss(args):
    print(tree_rss_kib(args.pid))


# --------------------------------------------------------------------------- load-generator output

WRK_MARK = "CFLOW_BENCH_WRK_JSON "
UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}


def parse_duration_us(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    return float(m.group(1)) * UNIT_US[m.group(2)] if m else None


def parse_wrk(text):
    """wrk output: the JSON line printed by the generated Lua done() when present, otherwise the
    human-readable summary (`--latency` distribution, totals, Non-2xx, socket errors)."""
    for line in text.splitlines():
        if line.startswith(WRK_MARK):
            d = json.loads(line[len(WRK_MARK):])
            errors = {k: v for k, v in d["errors"].items() if v and k != "status"}
            return {
                "requests": d["requests"],
                "duration_s": d["duration_us"] / 1e6,
                "rps": d["requests"] / (d["duration_us"] / 1e6),
                "non_2xx": d["errors"].get("status", 0),
                "errors": errors,
                "latency_us": d["latency_us"],
            }
    out = {"errors": {}, "non_2xx": 0, "latency_us": {}}
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"(\d+) requests in ([\d.]+\w+),", s)
        if m:
            out["requests"] = int(m.group(1))
            out["duration_s"] = parse_duration_us(m.group(2)) / 1e6
        m = re.match(r"Requests/sec:\s+([\d.]+)", s)
        if m:
            out["rps"] = float(m.group(1))
        m = re.match(r"(50|75|90|99)%\s+([\d.]+\w+)$", s)
        if m:
            out["latency_us"]["p" + m.group(1)] = parse_duration_us(m.group(2))
        m = re.match(r"Non-2xx or 3xx responses:\s+(\d+)", s)
        if m:
            out["non_2xx"] = int(m.group(1))
        m = re.match(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", s)
        if m:
            for k, v in zip(("connect", "read", "write", "timeout"), m.groups()):
                if int(v):
                    out["errors"][k] = int(v)
    if "requests" not in out:
        raise ValueError("no wrk summary in output")
    return out


def parse_cflow(text):
    """cflow-load --json: the last line that is a JSON object."""
    obj = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                pass
    if obj is None:
        try:
            obj = json.loads(text)
        except ValueError:
            raise ValueError("no JSON object in cflow-load output")
    status = obj.get("status", {})
    non_2xx = sum(int(n) for code, n in status.items() if not str(code).startswith(("2", "3")))
    return {
        "requests": obj["requests"],
        "duration_s": obj.get("duration_s"),
        "rps": obj["rps"],
        "non_2xx": non_2xx,
        "errors": {k: v for k, v in (obj.get("errors") or {}).items() if v},
        "latency_us": obj.get("latency_us", {}),
        # Open loop over plain TCP: latency to the kernel's receive timestamp of each response
        # (the generator's own delays in reading it left out); null otherwise.
        "rx_latency_us": obj.get("rx_latency_us"),
        # How evenly the connections were served: responses per connection (min, p1, p50, p99,
        # max) and p99/p50.
        "per_connection": obj.get("per_connection"),
        "loadgen_cpu_s": obj.get("loadgen_cpu_s"),
        # Open loop: sends that left > 2 ms late on an idle connection (the generator was held up).
        "late_sends": obj.get("late_sends"),
        # https: negotiated version/cipher/group, resumption on or off, handshakes and resumed.
        "tls": obj.get("tls"),
    }


def cmd_parse(args):
    with open(args.file, errors="replace") as f:
        text = f.read()
    parsed = parse_wrk(text) if args.kind == "wrk" else parse_cflow(text)
    json.dump(parsed, sys.stdout)
    print()


# --------------------------------------------------------------------------- run records

def phase_record(prefix, kind):
    """One measured phase: the load generator's figures plus the CPU deltas of the same window."""
    with open(prefix + ".measure.json") as f:
        m = json.load(f)
    with open(prefix + ".out", errors="replace") as f:
        parsed = parse_wrk(f.read()) if kind == "wrk" else parse_cflow(f.read())
    requests = parsed["requests"]
    cpu = m["cpu_ns"]
    rec = dict(parsed)
    rec["wall_s"] = m["wall_s"]
    rec["loadgen_exit"] = m["cmd_exit"]
    rec["loadgen_cpu_s_rusage"] = m["cmd_user_s"] + m["cmd_sys_s"]
    for name, ns in cpu.items():
        rec[f"{name}_cpu_s"] = ns / 1e9
        rec[f"{name}_cpu_us_per_req"] = ns / 1e3 / requests if requests else None
        rec[f"{name}_cpu_util"] = ns / 1e9 / m["wall_s"] if m["wall_s"] else None
    rec["pids"] = m["pids"]
    return rec


def cmd_record(args):
    rec = {"scenario": args.scenario, "peer": args.peer, "round": args.round}
    if args.skipped:
        rec["skipped"] = args.skipped
    elif args.idle:
        with open(args.idle) as f:
            rec["idle"] = json.load(f)
    else:
        rec["closed"] = phase_record(args.closed, args.kind)
        if args.open:
            rec["open"] = phase_record(args.open, args.kind)
        rec["rss_kib"] = args.rss
    with open(args.out, "w") as f:
        json.dump(rec, f, indent=1)
    c = rec.get("closed")
    if c:
        line = (f"{args.scenario}/{args.peer} round {args.round}: {c['rps']:.0f} req/s, "
                f"proxy {c['proxy_cpu_us_per_req']:.2f} µs/req "
                f"({c['proxy_cpu_util'] * 100:.0f}% CPU), p99 {c['latency_us'].get('p99')} µs")
        o = rec.get("open")
        if o:
            line += (f"; open {o['rps']:.0f} req/s p99 {o['latency_us'].get('p99')} µs, "
                     f"{o['proxy_cpu_us_per_req']:.2f} µs/req")
        tls = c.get("tls")
        if tls and tls.get("handshakes"):
            line += (f"; {tls['version']} {tls['handshakes']} handshakes, "
                     f"{100 * tls['resumed'] / tls['handshakes']:.1f}% resumed")
        if c.get("non_2xx") or c.get("errors"):
            line += f"; non-2xx {c.get('non_2xx')} errors {c.get('errors')}"
        print(line, file=sys.stderr)


def cmd_combine(args):
    with open(args.meta) as f:
        meta = json.load(f)
    runs = []
    for name in sorted(os.listdir(args.runs)):
        if name.endswith(".json"):
            with open(os.path.join(args.runs, name)) as f:
                runs.append(json.load(f))
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1)


# --------------------------------------------------------------------------- idle connections

def read_response(sock):
    """Reads one HTTP/1.1 response with a Content-Length body; returns its status."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length is None:
        raise ConnectionError("response without Content-Length")
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the response body")
        body += chunk
    return status


def cmd_idle(args):
    import resource
    import select
    import socket
    import ssl
    import struct
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.connections + 256
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    ctx = None
    if args.tls_ca:
        ctx = ssl.create_default_context(cafile=args.tls_ca)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
               f"User-Agent: benchtool-idle\r\n\r\n").encode()
    time.sleep(args.settle)
    before = tree_rss_kib(args.pid)
    socks, statuses, errors = [], {}, {}
    started = time.monotonic()
    for _ in range(args.connections):
        try:
            raw = socket.create_connection((args.host, args.port), timeout=10)
            # Reset instead of TIME_WAIT when closed: many runs reuse the port range.
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock = ctx.wrap_socket(raw, server_hostname=args.host) if ctx else raw
            if not args.no_request:
                sock.sendall(request)
                status = read_response(sock)
                statuses[status] = statuses.get(status, 0) + 1
            socks.append(sock)
        except (OSError, ValueError) as err:
            key = type(err).__name__
            errors[key] = errors.get(key, 0) + 1
    opened_s = time.monotonic() - started
    time.sleep(args.settle)
    after = tree_rss_kib(args.pid)
    # Still open? A closed connection polls as POLLRDHUP/POLLHUP.
    poller = select.poll()
    for sock in socks:
        poller.register(sock.fileno(), select.POLLRDHUP | select.POLLHUP)
    closed = len(poller.poll(0))
    for sock in socks:
        sock.close()
    grown = (after - before) * 1024
    result = {
        "connections": args.connections,
        "opened": len(socks),
        "still_open": len(socks) - closed,
        "requests": not args.no_request,
        "tls": bool(ctx),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "errors": errors,
        "open_seconds": round(opened_s, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "bytes_per_connection": round(grown / len(socks)) if socks else None,
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"idle: {len(socks)} connections ({len(socks) - closed} still open), RSS "
          f"{before} → {after} KiB: {result['bytes_per_connection']} B per connection",
          file=sys.stderr)


# --------------------------------------------------------------------------- run metadata

def first_line(cmd):
    """First output line of a version command (stdout or stderr), or "" when it cannot run."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    out = (p.stdout.strip() or p.stderr.strip()).splitlines()
    return out[0].strip() if out else ""


def output_lines(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        return []


def machine_info():
    model = ""
    for line in output_lines(["lscpu"]):
        if line.startswith("Model name:"):
            model = line.split(":", 1)[1].strip()
            break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": os.uname().release,
    }


def peer_versions(root, cflow_load):
    rev = first_line(["git", "-C", root, "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml",
                            "Cargo.lock"], capture_output=True, text=True).stdout.strip()
    versions = {
        "credentialflow": rev + ("-dirty" if dirty else ""),
        "nginx": first_line(["nginx", "-v"]),
        "haproxy": first_line(["haproxy", "-v"]).split(" - ")[0],
        "wrk": first_line(["wrk", "-v"]).split(" Copyright")[0],
        "rustc": first_line(["rustc", "-V"]),
    }
    if cflow_load:
        versions["cflow-load"] = first_line([cflow_load, "--version"])
    return versions


def scenario_meta(name, desc, opts):
    """A scenario's entry in the meta: name, description and its --scenario-opt settings
    (rate: its own open-loop rate; unit: "req" or "handshake"; expect_resumed: "yes"/"no")."""
    out = {"name": name, "description": desc}
    for opt_name, setting in opts:
        if opt_name != name:
            continue
        key, _, value = setting.partition("=")
        out[key] = int(value) if key == "rate" else value
    return out


def cmd_meta(args):
    """The header of a bench/run result: machine, versions, and the run's parameters (from the
    environment bench/run exports)."""
    e = os.environ
    meta = machine_info()
    meta.update({
        "versions": peer_versions(args.root, args.cflow_load),
        "layout": {"proxy_cpus": e["PROXY_CPUS"], "upstream_cpus": e["UPSTREAM_CPUS"],
                   "loadgen_cpus": e["LOADGEN_CPUS"],
                   "loadgen_threads": int(e["LOADGEN_THREADS"]), "workers": int(e["WORKERS"])},
        "loadgen": e["LOADGEN"], "duration": e["DURATION"], "warmup": e["WARMUP"],
        "connections": int(e["CONNECTIONS"]), "rate": int(e["RATE"]), "runs": int(e["RUNS"]),
        "idle_connections": int(e.get("IDLE_CONNECTIONS", "0")),
        "peers": e["PEERS"].split(","),
        "same_headers": e["SAME_HEADERS"] == "yes",
        "scenarios": [scenario_meta(name, desc, args.scenario_opt) for name, desc in args.scenario],
        "command": e["COMMAND_LINE"],
    })
    if meta["same_headers"]:
        meta["note"] = "--same-headers: nginx and haproxy also add X-Forwarded-* and X-Request-Id"
    with open(args.out, "w") as f:
        json.dump(meta, f, indent=1)


def cmd_loadgen_record(args):
    """One bench/loadgen-vs-wrk run: the generator's own figures and its rusage."""
    with open(args.prefix + ".measure.json") as f:
        m = json.load(f)
    with open(args.prefix + ".out", errors="replace") as f:
        text = f.read()
    r = parse_wrk(text) if args.tool == "wrk" else parse_cflow(text)
    rec = {"tool": "wrk" if args.tool == "wrk" else "cflow-load", "round": args.round,
           "requests": r["requests"], "rps": r["rps"], "latency_us": r["latency_us"],
           "non_2xx": r["non_2xx"], "errors": r["errors"],
           "cpu_s": m["cmd_user_s"] + m["cmd_sys_s"], "user_s": m["cmd_user_s"],
           "sys_s": m["cmd_sys_s"], "wall_s": m["wall_s"],
           "self_reported_cpu_s": r.get("loadgen_cpu_s"),
           "upstream_cpu_s": m["cpu_ns"]["upstream"] / 1e9}
    with open(args.prefix + ".record.json", "w") as f:
        json.dump(rec, f)
    print(f"{rec['tool']} round {args.round}: {rec['rps']:.0f} req/s, {rec['cpu_s']:.2f} CPU s, "
          f"{rec['requests'] / rec['cpu_s']:.0f} req per CPU-s, upstream "
          f"{rec['upstream_cpu_s'] / rec['wall_s'] * 100:.0f}% CPU", file=sys.stderr)


def cmd_loadgen_combine(args):
    e = os.environ
    runs = []
    for name in sorted(os.listdir(args.raw)):
        if name.endswith(".record.json"):
            with open(os.path.join(args.raw, name)) as f:
                runs.append(json.load(f))
    meta = machine_info()
    versions = peer_versions(args.root, args.cflow_load)
    meta.update({
        "versions": "; ".join(v for k, v in versions.items() if k in ("wrk", "cflow-load", "nginx")),
        "upstream_cpus": e["UPSTREAM_CPUS"], "loadgen_cpus": e["LOADGEN_CPUS"],
        "connections": int(e["CONNECTIONS"]), "duration": e["DURATION"], "runs": int(e["RUNS"]),
        "tools": ["wrk", "cflow-load"],
    })
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "runs": runs}, f, indent=1)


# --------------------------------------------------------------------------- report

def fmt_num(x, digits=1):
    if x is None:
        return "n/a"
    if abs(x) >= 1000:
        return f"{x / 1000:.{digits}f}k"
    return f"{x:.{digits}f}"


def fmt_range(values, digits=1):
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} ({fmt_num(min(values), digits)}–{fmt_num(max(values), digits)})"


def fmt_latency(us):
    if us is None:
        return "n/a"
    if us >= 1000:
        return f"{us / 1000:.2f} ms"
    return f"{us:.0f} µs"


def median_or_none(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def paired_ratios(runs, peer, key, base="nginx"):
    """Per-round ratio peer/base (both measured in the same round), so drift between rounds cancels."""
    by_round = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["peer"]] = r
    ratios = []
    for peers in by_round.values():
        if peer in peers and base in peers:
            a, b = key(peers[peer]), key(peers[base])
            if a is not None and b:
                ratios.append(a / b)
    return ratios


def closed_rps(r):
    return (r.get("closed") or {}).get("rps")


def closed_cpu(r):
    return (r.get("closed") or {}).get("proxy_cpu_us_per_req")


def open_p99_of(r):
    return ((r.get("open") or {}).get("latency_us") or {}).get("p99")


def open_rx_p99_of(r):
    return ((r.get("open") or {}).get("rx_latency_us") or {}).get("p99")


def resumption_problems(where, tls, expect):
    """A run whose handshakes did not resume as the scenario expects ("yes": at least 90 %
    resumed; "no": none)."""
    if not tls or not expect or not tls.get("handshakes"):
        return []
    share = tls["resumed"] / tls["handshakes"]
    if expect == "yes" and share < 0.9:
        return [f"{where}: only {share * 100:.1f}% of {tls['handshakes']} TLS handshakes resumed"]
    if expect == "no" and tls["resumed"]:
        return [f"{where}: {tls['resumed']} of {tls['handshakes']} TLS handshakes resumed, "
                f"expected none"]
    return []


def tls_summary(name, runs, peers):
    """One line on what the TLS runs negotiated (cflow-load's check connection) and the share
    of closed-loop handshakes that resumed, per peer; a problem when peers negotiated
    different parameters."""
    params, resumed = {}, {}
    for peer in peers:
        for r in runs:
            tls = (r.get("closed") or {}).get("tls") if r["peer"] == peer else None
            if not tls:
                continue
            params.setdefault(peer, set()).add(f"{tls['version']} {tls['cipher']} {tls['group']}")
            total = resumed.setdefault(peer, [0, 0])
            total[0] += tls["resumed"]
            total[1] += tls["handshakes"]
    if not params:
        return None, []
    distinct = set().union(*params.values())
    if len(distinct) == 1:
        what = f"TLS: {distinct.pop()} for every peer"
        problems = []
    else:
        what = "TLS: " + "; ".join(f"{p} {', '.join(sorted(v))}" for p, v in params.items())
        problems = [f"{name}: the peers negotiated different TLS parameters ({what[5:]})"]
    count = lambda t: f"{t / 1000:.1f}k" if t >= 10000 else str(t)
    shares = ", ".join(f"{p} {100 * n / t:.1f} % of {count(t)}" if t else f"{p} no handshakes"
                       for p, (n, t) in resumed.items())
    return f"{what}. Handshakes resumed (closed loop, all runs): {shares}.", problems


def idle_table(meta, runs, problems):
    """The table of an idle-connections scenario (one round): memory per idle connection."""
    out = ["| peer | idle connections | still open | RSS before MiB | RSS after MiB "
           "| idle B/conn | ×nginx B/conn |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    by_peer = {}
    for r in runs:
        by_peer.setdefault(r["peer"], r)
    nginx = (by_peer.get("nginx") or {}).get("idle") or {}
    for peer in meta["peers"]:
        r = by_peer.get(peer)
        if r is None:
            continue
        if r.get("skipped"):
            out.append(f"| {peer} | skipped: {r['skipped']} | | | | | |")
            continue
        i = r["idle"]
        per = i.get("bytes_per_connection")
        ratio = (f"{per / nginx['bytes_per_connection']:.2f}"
                 if per is not None and nginx.get("bytes_per_connection") else "—")
        out.append(f"| {peer} | {i['opened']} of {i['connections']} | {i['still_open']} "
                   f"| {i['rss_before_kib'] / 1024:.1f} | {i['rss_after_kib'] / 1024:.1f} "
                   f"| {per if per is not None else 'n/a'} | {ratio} |")
        if i["still_open"] < i["connections"] or i.get("errors"):
            problems.append(f"{peer}: {i['still_open']} of {i['connections']} idle connections "
                            f"still open, errors {i.get('errors') or {}}")
        bad = {k: v for k, v in i.get("statuses", {}).items() if not k.startswith("2")}
        if bad:
            problems.append(f"{peer}: idle connections' requests got {bad}")
    out.append("")
    out.append("idle B/conn is the growth of the proxy's resident memory (all its processes) from "
               "before the connections were opened to a second after the last one was, divided by "
               "the connections; the kernel's socket memory is not in it.")
    out.append("")
    return out


def report_markdown(data):
    meta = data["meta"]
    lines = []
    lines.append("# Credentialflow side-by-side benchmark")
    lines.append("")
    lines.append(f"- date: {meta['date']}")
    lines.append(f"- machine: {meta['cpu_model']}, {meta['cores']} cores, kernel {meta['kernel']}")
    lines.append(f"- versions: credentialflow {meta['versions']['credentialflow']}; "
                 f"{meta['versions']['nginx']}; {meta['versions']['haproxy']}; "
                 f"{meta['versions']['wrk']}; {meta['versions']['rustc']}"
                 + (f"; {meta['versions']['cflow-load']}" if meta['versions'].get('cflow-load') else ""))
    lay = meta["layout"]
    lines.append(f"- layout: proxy on CPU {lay['proxy_cpus']} ({lay['workers']} worker(s)), "
                 f"upstream nginx on CPU {lay['upstream_cpus']} (1 worker), "
                 f"load generator ({meta['loadgen']}, {lay['loadgen_threads']} thread(s)) on CPU {lay['loadgen_cpus']}")
    lines.append(f"- load: {meta['connections']} connections, {meta['duration']} per run after "
                 f"{meta['warmup']} warm-up, {meta['runs']} runs per peer (peers interleaved per round); "
                 f"open loop at {meta['rate']} req/s"
                 + ("" if meta["loadgen"] == "cflow" else " (needs cflow-load: n/a with wrk)"))
    lines.append(f"- command: `{meta['command']}`")
    if meta.get("note"):
        lines.append(f"- note: {meta['note']}")
    lines.append("")
    lines.append("Cells are median (min–max) over the runs. ×nginx is the median of per-round ratios "
                 "to nginx measured in the same round. CPU µs/req is the proxy's own CPU time "
                 "(all its processes and threads, user + kernel) divided by requests completed; "
                 "lower is better. p50/p99 are closed-loop (at saturation, p50 ≈ connections ÷ req/s); "
                 "open-loop figures are at the fixed rate. conn p99/p50 is how evenly the "
                 "connections were served in the closed loop: the 99th over the 50th percentile of "
                 "the responses each connection completed (1.00 = all alike; cflow-load only). "
                 "×nginx open p99 is the median of per-round open-loop p99 ratios. open p99 rx "
                 "is the same p99 measured to the kernel's receive timestamp of each response "
                 "(SO_TIMESTAMPNS) instead of to the moment the generator read it, so a stall "
                 "of the generator's CPU after a response arrived is not in it (plain HTTP only).")
    lines.append("")
    problems = []
    for scenario in meta["scenarios"]:
        runs = [r for r in data["runs"] if r["scenario"] == scenario["name"]]
        if not runs:
            continue
        lines.append(f"## {scenario['name']}")
        lines.append("")
        lines.append(scenario["description"])
        lines.append("")
        if scenario.get("kind") == "idle":
            lines.extend(idle_table(meta, runs, problems))
            continue
        rate = scenario.get("rate", meta["rate"])
        unit = scenario.get("unit", "req")
        per_s = "handshakes/s" if unit == "handshake" else "req/s"
        lines.append(f"| peer | {per_s} | ×nginx {per_s} | CPU µs/{unit} | ×nginx CPU | p50 | p99 "
                     f"| conn p99/p50 | open p99 @{rate}/s | ×nginx open p99 | open p99 rx "
                     f"| ×nginx open p99 rx | open CPU µs/{unit} | RSS MiB |")
        lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
                     "| ---: | ---: | ---: |")
        peers = [p for p in meta["peers"] if any(r["peer"] == p for r in runs)]
        for peer in peers:
            pr = [r for r in runs if r["peer"] == peer]
            if all(r.get("skipped") for r in pr):
                lines.append(f"| {peer} | skipped: {pr[0]['skipped']} | | | | | | | | | | | | |")
                continue
            pr = [r for r in pr if not r.get("skipped")]
            rps = [closed_rps(r) for r in pr]
            cpu = [closed_cpu(r) for r in pr]
            p50 = median_or_none([(r.get("closed") or {}).get("latency_us", {}).get("p50") for r in pr])
            p99 = median_or_none([(r.get("closed") or {}).get("latency_us", {}).get("p99") for r in pr])
            fair = median_or_none([((r.get("closed") or {}).get("per_connection") or {}).get("fairness")
                                   for r in pr])
            opens = [r.get("open") for r in pr if r.get("open")]
            open_p99 = median_or_none([open_p99_of(r) for r in pr if r.get("open")])
            rx_p99 = median_or_none([open_rx_p99_of(r) for r in pr if r.get("open")])
            open_cpu = [o.get("proxy_cpu_us_per_req") for o in opens]
            open_short = [o for o in opens if o.get("rps") and o["rps"] < 0.95 * rate]
            rss = median_or_none([r.get("rss_kib") for r in pr])
            if peer == "nginx":
                rr = cr = "1.00"
                orr = "1.00" if opens else "n/a"
                rxr = "1.00" if rx_p99 is not None else "n/a"
            else:
                rps_ratio = median_or_none(paired_ratios(runs, peer, closed_rps))
                cpu_ratio = median_or_none(paired_ratios(runs, peer, closed_cpu))
                open_ratio = median_or_none(paired_ratios(runs, peer, open_p99_of))
                rr = f"{rps_ratio:.2f}" if rps_ratio is not None else "—"
                cr = f"{cpu_ratio:.2f}" if cpu_ratio is not None else "—"
                orr = f"{open_ratio:.2f}" if open_ratio is not None else ("—" if opens else "n/a")
                rx_ratio = median_or_none(paired_ratios(runs, peer, open_rx_p99_of))
                rxr = f"{rx_ratio:.2f}" if rx_ratio is not None else ("—" if rx_p99 is not None else "n/a")
            open_cell = fmt_latency(open_p99) if opens else "n/a"
            if open_short:
                open_cell += " †"
                problems.append(f"{scenario['name']}/{peer}: open loop reached only "
                                f"{min(o['rps'] for o in open_short):.0f} of {rate} req/s in "
                                f"{len(open_short)} run(s) (†)")
            lines.append(
                f"| {peer} | {fmt_range(rps)} | {rr} | {fmt_range(cpu, 2)} | {cr} "
                f"| {fmt_latency(p50)} | {fmt_latency(p99)} "
                f"| {f'{fair:.2f}' if fair is not None else 'n/a'} | {open_cell} | {orr} "
                f"| {fmt_latency(rx_p99) if rx_p99 is not None else 'n/a'} | {rxr} "
                f"| {fmt_range(open_cpu, 2) if opens else 'n/a'} "
                f"| {f'{rss / 1024:.1f}' if rss is not None else 'n/a'} |")
            threads = meta["layout"]["loadgen_threads"]
            for r in pr:
                for phase in ("closed", "open"):
                    m = r.get(phase)
                    if not m:
                        continue
                    where = f"{scenario['name']}/{peer} round {r['round']} {phase}"
                    expected_refusals = scenario.get("expect_refusals")
                    if (m.get("non_2xx") and not expected_refusals) or m.get("errors"):
                        problems.append(f"{where}: non-2xx {m.get('non_2xx', 0)}, "
                                        f"errors {m.get('errors') or {}}")
                    util = m["loadgen_cpu_s_rusage"] / m["wall_s"] / threads if m.get("wall_s") else 0
                    late = m.get("late_sends") or 0
                    if phase == "open" and m.get("requests") and late > 0.001 * m["requests"]:
                        problems.append(f"{where}: {late} sends left more than 2 ms late "
                                        f"({100 * late / m['requests']:.2f}% of requests): the "
                                        f"generator was held up, and its stalls are in this "
                                        f"run's latency tail too")
                    if phase == "closed" and util >= 0.9:
                        problems.append(f"{where}: the load generator used {util * 100:.0f}% of its "
                                        f"CPU: the run may be load-generator bound")
                    problems.extend(resumption_problems(where, m.get("tls"),
                                                        scenario.get("expect_resumed")))
        lines.append("")
        tls_line, tls_problems = tls_summary(scenario["name"], runs, peers)
        if tls_line:
            lines.append(tls_line)
            lines.append("")
        problems.extend(tls_problems)
    if problems:
        lines.append("## Problems seen")
        lines.append("")
        lines.extend(f"- {p}" for p in problems)
        lines.append("")
    return "\n".join(lines)


def cmd_report(args):
    with open(args.file) as f:
        data = json.load(f)
    print(report_markdown(data))


def cmd_loadgen_table(args):
    with open(args.file) as f:
        data = json.load(f)
    meta = data["meta"]
    lines = ["# Load generators: requests per load-generator CPU-second", ""]
    lines.append(f"- date: {meta['date']}; {meta['cpu_model']}, kernel {meta['kernel']}")
    lines.append(f"- target: upstream nginx (1 worker) on CPU {meta['upstream_cpus']}, `GET /` "
                 f"(small fixed body); load generator on CPU {meta['loadgen_cpus']}, 1 thread, "
                 f"-c{meta['connections']}, closed loop, {meta['duration']} per run, {meta['runs']} runs "
                 f"(interleaved)")
    lines.append(f"- versions: {meta['versions']}")
    lines.append(f"- CPU time is the load generator process's own user + system time (wait4 rusage).")
    lines.append("")
    lines.append("| load generator | req/s | CPU s (user+sys) | loadgen CPU % | req per loadgen CPU-s "
                 "| p50 | p99 |")
    lines.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for tool in meta["tools"]:
        runs = [r for r in data["runs"] if r["tool"] == tool]
        if not runs:
            lines.append(f"| {tool} | not available | | | | | |")
            continue
        rps = [r["rps"] for r in runs]
        cpu = [r["cpu_s"] for r in runs]
        eff = [r["requests"] / r["cpu_s"] for r in runs if r["cpu_s"]]
        util = [100 * r["cpu_s"] / r["wall_s"] for r in runs]
        p50 = median_or_none([r["latency_us"].get("p50") for r in runs])
        p99 = median_or_none([r["latency_us"].get("p99") for r in runs])
        lines.append(f"| {tool} | {fmt_range(rps)} | {fmt_range(cpu, 2)} | {fmt_range(util, 0)} "
                     f"| {fmt_range(eff)} "
                     f"| {fmt_latency(p50)} | {fmt_latency(p99)} |")
    lines.append("")
    lines.append("Cells are median (min–max). The upstream is the same nginx for both; when the load "
                 "generator is the bottleneck (its CPU near 100 % of the run), req/s is its ceiling and "
                 "req per CPU-second its efficiency.")
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--tree", action="append", default=[], help="NAME=PID (repeatable)")
    m.add_argument("--out", required=True)
    m.add_argument("command", nargs=argparse.REMAINDER)
    r = sub.add_parser("rss")
    r.add_argument("pid", type=int)
    i = sub.add_parser("idle")
    i.add_argument("--pid", type=int, required=True, help="root of the process tree to measure")
    i.add_argument("--host", default="127.0.0.1")
    i.add_argument("--port", type=int, required=True)
    i.add_argument("--path", default="/")
    i.add_argument("--connections", type=int, default=10000)
    i.add_argument("--tls-ca", help="speak TLS, trusting this CA file")
    i.add_argument("--no-request", action="store_true", help="connect only (no request)")
    i.add_argument("--settle", type=float, default=1.0, help="seconds to wait before each RSS reading")
    i.add_argument("--out", required=True)
    p = sub.add_parser("parse")
    p.add_argument("kind", choices=["wrk", "cflow"])
    p.add_argument("file")
    rep = sub.add_parser("report")
    rep.add_argument("file")
    rc = sub.add_parser("record")
    rc.add_argument("--scenario", required=True)
    rc.add_argument("--peer", required=True)
    rc.add_argument("--round", type=int, required=True)
    rc.add_argument("--kind", choices=["wrk", "cflow"], default="wrk")
    rc.add_argument("--closed", help="file prefix of the closed-loop phase")
    rc.add_argument("--open", help="file prefix of the open-loop phase")
    rc.add_argument("--rss", type=int, help="proxy RSS in KiB at the end")
    rc.add_argument("--idle", help="the output of `idle` (an idle-connections scenario)")
    rc.add_argument("--skipped", help="reason the run was not measured")
    rc.add_argument("--out", required=True)
    cb = sub.add_parser("combine")
    cb.add_argument("--meta", required=True)
    cb.add_argument("--runs", required=True, help="directory of run records")
    cb.add_argument("--out", required=True)
    mt = sub.add_parser("meta")
    mt.add_argument("--out", required=True)
    mt.add_argument("--root", required=True, help="the repository (for its git revision)")
    mt.add_argument("--cflow-load", help="cflow-load binary, when it was used")
    mt.add_argument("--scenario", nargs=2, action="append", default=[], metavar=("NAME", "DESC"))
    mt.add_argument("--scenario-opt", nargs=2, action="append", default=[],
                    metavar=("NAME", "KEY=VALUE"),
                    help="rate=RPS, unit=handshake, expect_resumed=yes|no, kind=idle")
    lr = sub.add_parser("loadgen-record")
    lr.add_argument("prefix")
    lr.add_argument("tool", choices=["wrk", "cflow"])
    lr.add_argument("round", type=int)
    lc = sub.add_parser("loadgen-combine")
    lc.add_argument("--raw", required=True)
    lc.add_argument("--root", required=True)
    lc.add_argument("--cflow-load")
    lc.add_argument("--out", required=True)
    lt = sub.add_parser("loadgen-table")
    lt.add_argument("file")
    args = ap.parse_args()
    if args.cmd == "measure":
        if args.command and args.command[0] == "--":
            args.command = args.command[1:]
        sys.exit(cmd_measure(args))
    {"rss": cmd_rss, "idle": cmd_idle, "parse": cmd_parse, "report": cmd_report, "record": cmd_record,
     "combine": cmd_combine, "meta": cmd_meta, "loadgen-record": cmd_loadgen_record,
     "loadgen-combine": cmd_loadgen_combine, "loadgen-table": cmd_loadgen_table}[args.cmd](args)


if __name__ == "__main__":
    main()
