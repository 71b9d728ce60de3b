#!/usr/bin/env bash
# Local development services on loopback: Redis and an S3-compatible endpoint (moto's server).
# One way to start them, used by the Makefile, .ci/run and developers alike. `start` also makes
# sure Debian's `chromium` is installed (the browser tests load the batch report and /docs in
# headless Chromium); it only installs it, it starts no browser.
#   bash infra/local/services.sh start|stop|status
set -euo pipefail
cd "$(dirname "$0")/../.."
REDIS_PORT=${REDIS_PORT:-6379}
S3_PORT=${S3_PORT:-9000}
RUN_DIR=${RUN_DIR:-.run}
MOTO=${MOTO:-.venv/bin/moto_server}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)  # absolute: redis-server resolves --dir and --logfile itself

redis_up() { redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; }
s3_up() { curl -fsS -o /dev/null "http://127.0.0.1:$S3_PORT/moto-api/" 2>/dev/null; }

start_redis() {
  if redis_up; then echo "redis: already up on 127.0.0.1:$REDIS_PORT"; return; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis: installing redis-server (apt)"
    (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$RUN_DIR" --logfile "$RUN_DIR/redis.log" --pidfile "$RUN_DIR/redis.pid"
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up && echo "redis: started on 127.0.0.1:$REDIS_PORT" || { echo "redis: failed to start"; exit 1; }
}

start_s3() {
  if s3_up; then echo "s3: already up on 127.0.0.1:$S3_PORT"; return; fi
  # its own session: a job control group that ends (a CI step, a shell tool) does not take it along
  setsid nohup "$MOTO" -H 127.0.0.1 -p "$S3_PORT" >"$RUN_DIR/s3.log" 2>&1 &
  echo $! >"$RUN_DIR/s3.pid"
  for _ in $(seq 100); do s3_up && break; sleep 0.1; done
  s3_up && echo "s3: moto server on http://127.0.0.1:$S3_PORT" || { echo "s3: failed to start"; cat "$RUN_DIR/s3.log"; exit 1; }
}

ensure_chromium() {
  if command -v chromium >/dev/null 2>&1; then return; fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium: not installed and no apt-get here; the browser tests will be skipped"; return
  fi
  echo "chromium: installing chromium (apt)"
  if (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null; then
    echo "chromium: $(chromium --version 2>/dev/null || echo installed)"
  else
    echo "chromium: apt-get install failed; the browser tests will be skipped"
  fi
}

stop() {
  # Only the processes this script started (their pid files); a Redis started otherwise stays up.
  for f in "$RUN_DIR/s3.pid" "$RUN_DIR/redis.pid"; do
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$f"
  done
  echo "stopped the services this script started"
}

case "${1:-start}" in
  start) start_redis; start_s3; ensure_chromium ;;
  stop) stop ;;
  status)
    redis_up && echo "redis: up" || echo "redis: down"
    s3_up && echo "s3: up" || echo "s3: down"
    command -v chromium >/dev/null 2>&1 && echo "chromium: installed" || echo "chromium: missing" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
