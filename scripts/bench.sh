#!/usr/bin/env bash
# Benchmarks the proxy against the direct path and against nginx, on loopback, and prints one
# table. Like with like: the proxy (1 worker) and nginx (worker_processes 1, proxy_buffering
# off, upstream keepalive) pinned to core 0; the load generator and the mock upstream pinned
# to core 1. Each scenario runs direct, proxy and nginx interleaved, ROUNDS times; the table
# shows min/median/max. Access logs are off on both servers. Bounded: about 9 minutes.
#
#   scripts/bench.sh                 # ROUNDS=3 by default
#   ROUNDS=5 DURATION=10 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
STREAMS=${STREAMS:-9000}
H2_STREAMS=${H2_STREAMS:-10000}
WS_SESSIONS=${WS_SESSIONS:-1000}
MOCK_PORT=19090
PROXY_PORT=19080
NGINX_PORT=19081
TOKEN=bench-service-token-0123456789
KEY=sk-bench-upstream-key
ONE_GIB=$((1024 * 1024 * 1024))

need() { command -v "$1" >/dev/null 2>&1; }
if ! need nginx || ! need curl || ! need taskset; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light curl util-linux >/dev/null
fi
need oha || cargo install oha --locked --quiet
echo "building (release)..." >&2
cargo build --release --locked --quiet --bin openai-auth-proxy --example mock-upstream --example stream-client --example bare-forwarder
BIN=target/release/openai-auth-proxy
MOCK=target/release/examples/mock-upstream
CLIENT=target/release/examples/stream-client
BARE=target/release/examples/bare-forwarder
BARE_PORT=19083

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$work/nginx.pid" ]; then kill "$(cat "$work/nginx.pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_healthy() { # url
  for _ in $(seq 1 500); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.01
  done
  echo "not healthy: $1" >&2
  return 1
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
nginx_worker() { pgrep -P "$(cat "$work/nginx.pid")" | head -1; }
peak_rss_while() { # server pid, load pid, starting peak: samples until the load exits
  local peak=$3 r
  while kill -0 "$2" 2>/dev/null; do
    r=$(rss_kib "$1"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.1
  done
  wait "$2" || true
  echo "$peak"
}

start_proxy() {
  SERVICE_TOKEN=$TOKEN OPENAI_API_KEY=$KEY OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" \
    BIND_ADDR=127.0.0.1 BIND_PORT=$PROXY_PORT RUST_LOG=warn PROXY__SERVER__WORKERS=1 \
    taskset -c 0 "$BIN" 2>"$work/proxy.log" &
  PROXY_PID=$!
  pids+=("$PROXY_PID")
}

# --- the three servers --------------------------------------------------------------------
MOCK_PORT=$MOCK_PORT MOCK_WORKERS=1 taskset -c 1 "$MOCK" 2>/dev/null &
pids+=($!)
wait_healthy "http://127.0.0.1:$MOCK_PORT/v1/models"

# (f) startup: time from exec to a healthy /healthz, median of 5 cold starts.
startups=()
for _ in 1 2 3 4 5; do
  t0=$(date +%s%N)
  start_proxy
  wait_healthy "http://127.0.0.1:$PROXY_PORT/healthz"
  t1=$(date +%s%N)
  startups+=($(( (t1 - t0) / 1000 )))
  kill "$PROXY_PID"; wait "$PROXY_PID" 2>/dev/null || true
done
start_proxy
wait_healthy "http://127.0.0.1:$PROXY_PORT/healthz"
sleep 0.5
IDLE_RSS=$(rss_kib "$PROXY_PID")

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
worker_rlimit_nofile 20000;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 19000; }
http {
  access_log off;
  upstream mock { server 127.0.0.1:$MOCK_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    client_max_body_size 0;
    location /healthz { return 200 ok; }
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $KEY";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout 600s;
    }
  }
}
NGINX
taskset -c 0 nginx -c "$work/nginx.conf" -p "$work"
wait_healthy "http://127.0.0.1:$NGINX_PORT/healthz"

# The design's floor: actix-web + awc forwarding with no feature at all, pinned like the proxy.
BARE_PORT=$BARE_PORT UPSTREAM="http://127.0.0.1:$MOCK_PORT" taskset -c 0 "$BARE" 2>/dev/null &
BARE_PID=$!
pids+=("$BARE_PID")
wait_healthy "http://127.0.0.1:$BARE_PORT/v1/models"

declare -A URL=( [direct]="http://127.0.0.1:$MOCK_PORT" [proxy]="http://127.0.0.1:$PROXY_PORT" [nginx]="http://127.0.0.1:$NGINX_PORT" [bare]="http://127.0.0.1:$BARE_PORT" )
TARGETS=(direct proxy nginx bare)
server_pid() { case "$1" in proxy) echo "$PROXY_PID" ;; nginx) nginx_worker ;; bare) echo "$BARE_PID" ;; *) echo "" ;; esac; }

declare -A R  # R[scenario,target] = space-separated values, one per round
add() { R["$1,$2"]="${R["$1,$2"]:-} $3"; }

oha_json() { # url, extra oha args...
  local url=$1; shift
  # Same work on every path: no compression negotiated (nginx and the mock do not compress).
  taskset -c 1 oha --no-tui --output-format json -H "Authorization: Bearer $TOKEN" \
    -H "Accept-Encoding: identity" "$@" "$url" 2>/dev/null
}
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}'
echo "running $ROUNDS rounds..." >&2
for round in $(seq 1 "$ROUNDS"); do
  echo "  round $round" >&2
  for t in "${TARGETS[@]}"; do
    # (a) throughput, non-streaming POST, c=64; CPU per request from /proc.
    pid=$(server_pid "$t")
    c0=0; [ -n "$pid" ] && c0=$(cpu_ticks "$pid")
    out=$(oha_json "${URL[$t]}/v1/chat/completions" -z "${DURATION}s" -c 64 -m POST -d "$BODY" -T application/json)
    rps=$(echo "$out" | field 'd["summary"]["requestsPerSec"]')
    ok=$(echo "$out" | field 'd["statusCodeDistribution"].get("200",0)')
    bad=$(echo "$out" | field 'sum(v for k,v in d["statusCodeDistribution"].items() if k!="200")')
    add a_rps "$t" "$(printf %.0f "$rps")"
    add a_err "$t" "$bad"
    if [ -n "$pid" ]; then
      c1=$(cpu_ticks "$pid")
      add a_cpu "$t" "$(python3 -c "print(round(($c1-$c0)*1e6/$(getconf CLK_TCK)/max($ok,1),1))")"
    fi
    # The floor is measured for throughput and CPU only.
    [ "$t" = bare ] && continue

    # (b) latency at a fixed 2,000 req/s, and at c=1.
    out=$(oha_json "${URL[$t]}/v1/chat/completions" -z "${DURATION}s" -c 32 -q 2000 -m POST -d "$BODY" -T application/json)
    add b_p50 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p50"]*1e6)')"
    add b_p99 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p99"]*1e6)')"
    add b_p999 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p99.9"]*1e6)')"
    out=$(oha_json "${URL[$t]}/v1/chat/completions" -z 5s -c 1 -m POST -d "$BODY" -T application/json)
    add b1_p50 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p50"]*1e6)')"
    add b1_p99 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p99"]*1e6)')"

    # (c) SSE at c=100: 20 events 50 ms apart per stream.
    out=$(taskset -c 1 "$CLIENT" sse "127.0.0.1:${URL[$t]##*:}" "/v1/sse?n=20&gap_ms=50" "$TOKEN" 100)
    for kv in $out; do
      k=${kv%%=*}; v=${kv#*=}
      add "c_$k" "$t" "$v"
    done
  done
done

# (h) the same proxy with every per-request feature on: audit log to a file, request, token
# and concurrency limits (high enough never to refuse), usage metering. Throughput and p99 at
# 2,000 req/s against the plain proxy, interleaved.
OBS_PORT=19082
SERVICE_TOKEN=$TOKEN OPENAI_API_KEY=$KEY OPENAI_BASE_URL="http://127.0.0.1:$MOCK_PORT/v1" \
  BIND_ADDR=127.0.0.1 BIND_PORT=$OBS_PORT RUST_LOG=warn PROXY__SERVER__WORKERS=1 \
  AUDIT_LOG="$work/audit.log" PROXY__LIMITS__REQUESTS_PER_MINUTE=100000000 \
  PROXY__LIMITS__TOKENS_PER_MINUTE=2000000000 PROXY__LIMITS__MAX_CONCURRENT=100000 \
  taskset -c 0 "$BIN" 2>"$work/proxy-observed.log" &
pids+=($!)
wait_healthy "http://127.0.0.1:$OBS_PORT/healthz"
for round in $(seq 1 "$ROUNDS"); do
  for t in proxy observed; do
    port=$PROXY_PORT; [ "$t" = observed ] && port=$OBS_PORT
    out=$(oha_json "http://127.0.0.1:$port/v1/chat/completions" -z "${DURATION}s" -c 64 -m POST -d "$BODY" -T application/json)
    add h_rps "$t" "$(echo "$out" | field 'round(d["summary"]["requestsPerSec"])')"
    out=$(oha_json "http://127.0.0.1:$port/v1/chat/completions" -z "${DURATION}s" -c 32 -q 2000 -m POST -d "$BODY" -T application/json)
    add h_p99 "$t" "$(echo "$out" | field 'round(d["latencyPercentiles"]["p99"]*1e6)')"
  done
done
add h_audit_lines observed "$(wc -l < "$work/audit.log")"

# (g) idle Realtime (WebSocket) sessions through the proxy: RSS per session. Run before (d),
# whose freed memory would otherwise absorb the growth.
before=$(rss_kib "$PROXY_PID")
taskset -c 1 "$CLIENT" ws-hold "127.0.0.1:$PROXY_PORT" "/v1/realtime?model=gpt-realtime" "$TOKEN" "$WS_SESSIONS" 3 > "$work/ws.out" 2>>"$work/client-errors.log" &
peak=$(peak_rss_while "$PROXY_PID" $! "$before")
add g_ready proxy "$(awk '{print $2}' "$work/ws.out")"
add g_errors proxy "$(awk '{print $4}' "$work/ws.out")"
add g_kib_per_session proxy "$(python3 -c "print(round(($peak-$before)/$WS_SESSIONS,1))")"
sleep 2

# (d) many concurrent idle streams (one event, then quiet): peak RSS of the server; the bare
# forwarder shows what actix-web + awc hold per stream before any feature.
for t in proxy nginx bare; do
  pid=$(server_pid "$t")
  before=$(rss_kib "$pid")
  taskset -c 1 "$CLIENT" hold "127.0.0.1:${URL[$t]##*:}" "/v1/sse?n=2&gap_ms=60000" "$TOKEN" "$STREAMS" 3 > "$work/hold.out" 2>>"$work/client-errors.log" &
  peak=$(peak_rss_while "$pid" $! "$before")
  add d_ready "$t" "$(awk '{print $2}' "$work/hold.out")"
  add d_errors "$t" "$(awk '{print $4}' "$work/hold.out")"
  add d_mib_per_1000 "$t" "$(python3 -c "print(round(($peak-$before)/1024/($STREAMS/1000),2))")"
  sleep 2
done

# (d2) the same over the production topology: the upstream over HTTPS, negotiated to HTTP/2
# as api.openai.com does, so all streams share one upstream connection. This is how 10,000
# streams fit under RLIMIT_NOFILE 20,000 (over HTTP/1.1 each stream holds two descriptors).
# Proxy only: nginx cannot speak HTTP/2 to an upstream.
TLS_MOCK_PORT=19091
H2_PORT=19084
scripts/generate-local-cert.sh --out "$work/certs" --force >/dev/null
MOCK_TLS_CERT="$work/certs/localhost.crt" MOCK_TLS_KEY="$work/certs/localhost.key" \
  MOCK_PORT=$TLS_MOCK_PORT MOCK_WORKERS=1 taskset -c 1 "$MOCK" 2>/dev/null &
pids+=($!)
SERVICE_TOKEN=$TOKEN OPENAI_API_KEY=$KEY OPENAI_BASE_URL="https://127.0.0.1:$TLS_MOCK_PORT/v1" \
  UPSTREAM_CA_PATH="$work/certs/localhost.crt" BIND_ADDR=127.0.0.1 BIND_PORT=$H2_PORT \
  RUST_LOG=warn PROXY__SERVER__WORKERS=1 taskset -c 0 "$BIN" 2>"$work/proxy-h2.log" &
H2_PID=$!
pids+=("$H2_PID")
wait_healthy "http://127.0.0.1:$H2_PORT/healthz"
curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$H2_PORT/v1/models"
before=$(rss_kib "$H2_PID")
taskset -c 1 "$CLIENT" hold "127.0.0.1:$H2_PORT" "/v1/sse?n=2&gap_ms=60000" "$TOKEN" "$H2_STREAMS" 3 > "$work/hold.out" 2>>"$work/client-errors.log" &
peak=$(peak_rss_while "$H2_PID" $! "$before")
add d2_ready proxy "$(awk '{print $2}' "$work/hold.out")"
add d2_errors proxy "$(awk '{print $4}' "$work/hold.out")"
add d2_mib_per_1000 proxy "$(python3 -c "print(round(($peak-$before)/1024/($H2_STREAMS/1000),2))")"
kill "$H2_PID" 2>/dev/null || true
sleep 2

# (e) 1 GiB up and down: MiB/s and the server's peak RSS growth.
truncate -s "$ONE_GIB" "$work/1g.bin"
truncate -s $((64 * 1024 * 1024)) "$work/64m.bin"
for t in direct proxy nginx; do
  pid=$(server_pid "$t")
  for dir in up down; do
    # Warm-up: the first transfer on a fresh connection runs before TCP has grown its windows
    # and measured half speed or less, on every path; 64 MiB first makes the runs comparable.
    if [ "$dir" = up ]; then
      taskset -c 1 curl -sS -o /dev/null -X POST -T "$work/64m.bin" -H "Authorization: Bearer $TOKEN" \
        -H "Content-Type: application/octet-stream" "${URL[$t]}/v1/upload"
    else
      taskset -c 1 curl -sS -o /dev/null -H "Authorization: Bearer $TOKEN" \
        "${URL[$t]}/v1/download?bytes=$((64 * 1024 * 1024))"
    fi
    before=0; [ -n "$pid" ] && before=$(rss_kib "$pid")
    peak=$before
    if [ "$dir" = up ]; then
      taskset -c 1 curl -sS -o /dev/null -w '%{speed_upload}\n' -X POST -T "$work/1g.bin" \
        -H "Authorization: Bearer $TOKEN" -H "Content-Type: application/octet-stream" \
        "${URL[$t]}/v1/upload" > "$work/speed" &
    else
      taskset -c 1 curl -sS -o /dev/null -w '%{speed_download}\n' \
        -H "Authorization: Bearer $TOKEN" "${URL[$t]}/v1/download?bytes=$ONE_GIB" > "$work/speed" &
    fi
    c=$!
    while kill -0 "$c" 2>/dev/null; do
      if [ -n "$pid" ]; then r=$(rss_kib "$pid"); [ "$r" -gt "$peak" ] && peak=$r; fi
      sleep 0.05
    done
    wait "$c"
    add "e_${dir}_mibs" "$t" "$(python3 -c "print(round($(cat "$work/speed")/1048576))")"
    [ -n "$pid" ] && add "e_${dir}_rss_growth_kib" "$t" "$((peak - before))"
  done
done

# --- the table -----------------------------------------------------------------------------
NGINX_IDLE=$(rss_kib "$(nginx_worker)")
for k in "${!R[@]}"; do printf '%s\t%s\n' "$k" "${R[$k]}"; done > "$work/results.tsv"
python3 - "$IDLE_RSS" "$NGINX_IDLE" "${startups[*]}" "$work/results.tsv" <<PY
import sys, statistics
idle, nginx_idle, startups = int(sys.argv[1]), int(sys.argv[2]), [int(x) for x in sys.argv[3].split()]
R = {}
for line in open(sys.argv[4]):
    key, values = line.rstrip("\n").split("\t")
    R[key] = [float(x) for x in values.split()]
def cell(key, t):
    v = R.get(f"{key},{t}")
    if not v: return "-"
    v = sorted(v)
    if len(v) == 1: return f"{v[0]:g}"
    return f"{statistics.median(v):g} ({v[0]:g}..{v[-1]:g})"
def med(key, t):
    v = R.get(f"{key},{t}")
    return statistics.median(v) if v else None
def ratio(key, a, b):
    x, y = med(key, a), med(key, b)
    return f"{x/y:.2f}" if x and y else "-"
rows = [
  ("(a) req/s, POST c=64", "a_rps"), ("(a) non-200 responses", "a_err"), ("(a) server CPU us/request", "a_cpu"),
  ("(b) p50 us @2000 rps", "b_p50"), ("(b) p99 us @2000 rps", "b_p99"), ("(b) p99.9 us @2000 rps", "b_p999"),
  ("(b) p50 us @c=1", "b1_p50"), ("(b) p99 us @c=1", "b1_p99"),
  ("(c) SSE first chunk p50 us (c=100)", "c_ttfc_p50_us"), ("(c) SSE first chunk p99 us", "c_ttfc_p99_us"),
  ("(c) SSE gap p50 us (sent every 50 ms)", "c_gap_p50_us"), ("(c) SSE gap p99 us", "c_gap_p99_us"),
  ("(c) SSE whole stream p50 ms", "c_total_p50_ms"), ("(c) reads holding >1 event", "c_coalesced_reads"), ("(c) stream errors", "c_errors"),
  ("(d) streams held", "d_ready"), ("(d) stream errors", "d_errors"), ("(d) MiB per 1000 idle streams", "d_mib_per_1000"),
  ("(d2) streams held, upstream HTTPS+HTTP/2", "d2_ready"), ("(d2) stream errors", "d2_errors"), ("(d2) MiB per 1000 idle streams, h2", "d2_mib_per_1000"),
  ("(g) WebSocket sessions held", "g_ready"), ("(g) WebSocket session errors", "g_errors"), ("(g) KiB per idle WebSocket session", "g_kib_per_session"),
  ("(e) 1 GiB upload MiB/s", "e_up_mibs"), ("(e) upload RSS growth KiB", "e_up_rss_growth_kib"),
  ("(e) 1 GiB download MiB/s", "e_down_mibs"), ("(e) download RSS growth KiB", "e_down_rss_growth_kib"),
]
print(f"{'scenario':40} {'direct':>22} {'proxy':>22} {'nginx':>22} {'proxy/direct':>12} {'proxy/nginx':>11}")
for name, key in rows:
    print(f"{name:40} {cell(key,'direct'):>22} {cell(key,'proxy'):>22} {cell(key,'nginx'):>22} {ratio(key,'proxy','direct'):>12} {ratio(key,'proxy','nginx'):>11}")
for name, key in [("(b) added p50 us @2000 rps", "b_p50"), ("(b) added p99 us @c=1", "b1_p99"), ("(c) added first chunk p50 us", "c_ttfc_p50_us")]:
    d, p, n = med(key, "direct"), med(key, "proxy"), med(key, "nginx")
    print(f"{name:40} {'':>22} {p-d:>22g} {n-d:>22g}")
print(f"{'(a) design floor: actix-web + awc, no features':40} {'':>22} {cell('a_rps','bare'):>22} req/s  {cell('a_cpu','bare')} us/request  proxy/floor req/s {ratio('a_rps','proxy','bare')}")
print(f"{'(d) design floor: MiB per 1000 streams':40} {'':>22} {cell('d_mib_per_1000','bare'):>22} ({cell('d_ready','bare')} held, {cell('d_errors','bare')} errors)")
print()
print(f"{'features on vs off (same build)':40} {'proxy':>22} {'+audit+limits+usage':>22} {'ratio':>12}")
for name, key in [("(h) req/s, POST c=64", "h_rps"), ("(h) p99 us @2000 rps", "h_p99")]:
    print(f"{name:40} {cell(key,'proxy'):>22} {cell(key,'observed'):>22} {ratio(key,'observed','proxy'):>12}")
print(f"{'(h) audit lines written':40} {'':>22} {cell('h_audit_lines','observed'):>22}")
print()
print(f"{'(f) idle RSS MiB':40} {'':>22} {idle/1024:>22.1f} {nginx_idle/1024:>22.1f}")
print(f"{'(f) start to healthy ms (median of 5)':40} {'':>22} {statistics.median(startups)/1000:>22.1f}")
print(f"\\nrounds=$ROUNDS duration=${DURATION}s streams=$STREAMS h2_streams=$H2_STREAMS cores=$(nproc) $(date -u +%Y-%m-%dT%H:%MZ)")
PY
