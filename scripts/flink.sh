#!/usr/bin/env bash
# Flink 2.2.1 standalone cluster (JobManager + one TaskManager) from PyPI's apache-flink wheels, plus a
# Beam worker pool (EXTERNAL environment) beside it.
# Usage: scripts/flink.sh setup|up|down|status
# Env: FLINK_REST_PORT (8081), BEAM_WORKER_POOL_PORT (50000), FLINK_START_TIMEOUT seconds (180),
#      FLINK_JOB_SERVER_JAR (path to a Beam Flink job-server jar to use instead of fetching one).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

FLINK_VERSION=2.2.1
BEAM_VERSION=2.77.0
# Beam 2.77's default Flink runner line; its job server is what Beam's FlinkRunner would download.
JOB_SERVER_ARTIFACT="org.apache.beam:beam-runners-flink-2.2-job-server:$BEAM_VERSION"
JOB_SERVER_JAR="$CACHE_DIR/jars/beam-runners-flink-2.2-job-server-$BEAM_VERSION.jar"

FLINK_PKG_DIR="$CACHE_DIR/flink"
export FLINK_HOME="$FLINK_PKG_DIR/pyflink"
FLINK_RUN="$RUN_DIR/flink"
export FLINK_CONF_DIR="$FLINK_RUN/conf"
export FLINK_LOG_DIR="$FLINK_RUN/log"
FLINK_REST_PORT=${FLINK_REST_PORT:-8081}
REST="http://127.0.0.1:$FLINK_REST_PORT"
FLINK_START_TIMEOUT=${FLINK_START_TIMEOUT:-180}
POOL_PORT=${BEAM_WORKER_POOL_PORT:-50000}
POOL_PID="$FLINK_RUN/worker-pool.pid"
POOL_LOG="$FLINK_RUN/worker-pool.log"
POOL_MARKER="$ROOT/scripts/beam_worker_pool.py"

setup_flink_dist() {
  local stamp="$FLINK_PKG_DIR/.stamp" h
  h=$(inputs_hash "apache-flink==$FLINK_VERSION")
  if stamp_ok "$stamp" "$h" && [[ -x "$FLINK_HOME/bin/start-cluster.sh" ]]; then
    say "flink: $FLINK_VERSION present in .cache/flink"
    return 0
  fi
  [[ -x "$PY" ]] || die "flink: .venv missing (run ./run.sh setup python)"
  say "flink: pip install --target .cache/flink apache-flink==$FLINK_VERSION (distribution only, ~340 MB)"
  rm -rf "$FLINK_PKG_DIR"
  # --no-deps --target: only the Flink distribution (jars + bin/); never into .venv, where apache-flink
  # would pin an old apache-beam and pyarrow.
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --target "$FLINK_PKG_DIR" \
    "apache-flink-libraries==$FLINK_VERSION" "apache-flink==$FLINK_VERSION"
  chmod +x "$FLINK_HOME"/bin/*.sh "$FLINK_HOME/bin/flink"
  stamp_write "$stamp" "$h"
  say "flink: installed in $FLINK_HOME"
}

# The portable Flink job server. Maven Central has it, but the mirror reachable here does not (see
# flink-conf/README.md): fetch it when it is there, otherwise say exactly what is missing.
setup_job_server() {
  if [[ -n "${FLINK_JOB_SERVER_JAR:-}" ]]; then
    [[ -f "$FLINK_JOB_SERVER_JAR" ]] || die "flink: FLINK_JOB_SERVER_JAR=$FLINK_JOB_SERVER_JAR does not exist"
    say "flink: job server from FLINK_JOB_SERVER_JAR=$FLINK_JOB_SERVER_JAR"
    return 0
  fi
  if [[ -s "$JOB_SERVER_JAR" ]]; then
    say "flink: job server jar present (.cache/jars/$(basename "$JOB_SERVER_JAR"))"
    return 0
  fi
  mkdir -p "$CACHE_DIR/jars"
  local log="$CACHE_DIR/jars/job-server-fetch.log" miss_stamp="$CACHE_DIR/jars/.job-server-missing"
  # A failed lookup costs ~15 s of Maven: remember it for a day (FLINK_JOB_SERVER_RETRY=1 forces one).
  if [[ -f "$miss_stamp" && "${FLINK_JOB_SERVER_RETRY:-0}" != 1 ]] && [[ -n $(find "$miss_stamp" -mmin -1440) ]]; then
    warn "flink: $JOB_SERVER_ARTIFACT not on the Maven mirror (checked $(date -r "$miss_stamp" +%H:%M); see flink-conf/README.md)"
    return 0
  fi
  if mvn -B -q -Dstyle.color=never -Dmaven.repo.local="$CACHE_DIR/m2" \
    org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy \
    -Dartifact="$JOB_SERVER_ARTIFACT" -DoutputDirectory="$CACHE_DIR/jars" >"$log" 2>&1; then
    rm -f "$miss_stamp"
    say "flink: job server jar fetched (.cache/jars/$(basename "$JOB_SERVER_JAR"))"
    return 0
  fi
  touch "$miss_stamp"
  warn "flink: $JOB_SERVER_ARTIFACT is not on the reachable Maven repository ($(grep -o 'Could not find artifact [^ ]*' "$log" | head -1 || echo "see $log"))."
  warn "flink: the cluster still runs; Beam jobs on it need that jar: set FLINK_JOB_SERVER_JAR=/path/to/it" \
    "(pass it as --flink_job_server_jar). Details: flink-conf/README.md"
  return 0
}

flink_setup() {
  command -v java >/dev/null || die "java not found (run ./run.sh setup debian)"
  setup_flink_dist
  setup_job_server
}

# Copy the tracked conf into .run/flink/conf with this checkout's paths; logging configs come from Flink.
write_conf() {
  mkdir -p "$FLINK_CONF_DIR" "$FLINK_LOG_DIR" "$FLINK_RUN"/{checkpoints,savepoints,web-tmp,web-upload,pid,tmp}
  sed -e "s#@RUN_DIR@#$RUN_DIR#g" -e "s#@REST_PORT@#$FLINK_REST_PORT#g" \
    "$ROOT/flink-conf/config.yaml" >"$FLINK_CONF_DIR/config.yaml"
  if grep -q '@[A-Z_]*@' "$FLINK_CONF_DIR/config.yaml"; then
    die "flink: unreplaced placeholder in $FLINK_CONF_DIR/config.yaml: $(grep -o '@[A-Z_]*@' "$FLINK_CONF_DIR/config.yaml" | head -1)"
  fi
  cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_HOME"/conf/logback*.xml "$FLINK_CONF_DIR/"
  # start-cluster.sh reads these to decide where to start daemons: both local.
  echo "127.0.0.1:$FLINK_REST_PORT" >"$FLINK_CONF_DIR/masters"
  echo "127.0.0.1" >"$FLINK_CONF_DIR/workers"
}

overview() { curl -sf --max-time 3 "$REST/overview"; }
json_field() { grep -o "\"$1\":[^,}]*" | head -1 | cut -d: -f2 | tr -d '"'; }

cluster_running() {
  # Our daemons write pid files to env.pid.dir (.run/flink/pid); any live pid there means "ours".
  local f pid
  for f in "$FLINK_RUN"/pid/*.pid; do
    [[ -f "$f" ]] || continue
    while read -r pid; do
      [[ "$pid" =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/cmdline ]] &&
        tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$FLINK_CONF_DIR" && return 0
    done <"$f"
  done
  return 1
}

log_tails() {
  local f
  for f in "$FLINK_LOG_DIR"/*standalonesession*.log "$FLINK_LOG_DIR"/*taskexecutor*.log "$FLINK_LOG_DIR"/*.out; do
    [[ -f "$f" ]] && tail_log "$f" 25
  done
}

start_cluster() {
  if cluster_running; then
    say "flink: cluster already running ($REST)"
    return 0
  fi
  port_open 127.0.0.1 "$FLINK_REST_PORT" && die "flink: port $FLINK_REST_PORT is taken by another process (ss -ltnp)"
  [[ -x "$FLINK_HOME/bin/start-cluster.sh" ]] || setup_flink_dist
  write_conf
  local f
  for f in "$FLINK_LOG_DIR"/*.log "$FLINK_LOG_DIR"/*.out; do [[ -f "$f" ]] && rotate_log "$f"; done
  local t0=$SECONDS
  say "flink: start-cluster.sh (conf $FLINK_CONF_DIR)"
  "$FLINK_HOME/bin/start-cluster.sh" </dev/null >"$FLINK_RUN/start-cluster.out" 2>&1 9>&- ||
    { cat "$FLINK_RUN/start-cluster.out" >&2; log_tails; die "flink: start-cluster.sh failed"; }
  # start-cluster.sh returns before the TaskManager registers: wait until /overview shows a TM with
  # its slots (a TM can be listed a moment before its slots are).
  local deadline=$((SECONDS + FLINK_START_TIMEOUT)) tms=0 slots=0 ov
  while ((SECONDS < deadline)); do
    if ov=$(overview 2>/dev/null); then
      tms=$(json_field taskmanagers <<<"$ov")
      slots=$(json_field slots-total <<<"$ov")
      ((${tms:-0} >= 1 && ${slots:-0} >= 1)) && break
    fi
    sleep 1
  done
  if ((${tms:-0} < 1 || ${slots:-0} < 1)); then
    log_tails
    die "flink: no TaskManager with slots at $REST within ${FLINK_START_TIMEOUT}s (logs: $FLINK_LOG_DIR)"
  fi
  say "flink: cluster up at $REST in $((SECONDS - t0)) s ($tms TaskManager, $slots slots)"
}

start_worker_pool() {
  if pid_alive "$POOL_PID" "$POOL_MARKER"; then
    say "flink: Beam worker pool already running (pid $(cat "$POOL_PID"), 127.0.0.1:$POOL_PORT)"
    return 0
  fi
  [[ -x "$PY" ]] || die "flink: .venv missing (run ./run.sh setup python)"
  port_open 127.0.0.1 "$POOL_PORT" && die "flink: port $POOL_PORT is taken (set BEAM_WORKER_POOL_PORT)"
  rotate_log "$POOL_LOG"
  local t0=$SECONDS
  # PYTHONPATH=ROOT: SDK workers unpickle the pipeline's DoFns, which import pipeline/ and transforms/.
  # A simple command after & so $! is the python pid itself (setsid execs it), and nothing of ours
  # (stdout pipe, lock fd) stays open in a waiting subshell.
  PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" setsid "$PY" "$POOL_MARKER" \
    --host 127.0.0.1 --port "$POOL_PORT" </dev/null >"$POOL_LOG" 2>&1 9>&- &
  echo $! >"$POOL_PID"
  local i
  for ((i = 0; i < 60; i++)); do
    port_open 127.0.0.1 "$POOL_PORT" && break
    pid_alive "$POOL_PID" "$POOL_MARKER" || { tail_log "$POOL_LOG"; die "flink: worker pool exited"; }
    sleep 0.5
  done
  port_open 127.0.0.1 "$POOL_PORT" || { tail_log "$POOL_LOG"; die "flink: worker pool not listening after 30 s"; }
  say "flink: Beam worker pool on 127.0.0.1:$POOL_PORT (pid $(cat "$POOL_PID"), $((SECONDS - t0)) s)" \
    "- use --environment_type=EXTERNAL --environment_config=127.0.0.1:$POOL_PORT"
}

flink_up() {
  start_cluster
  start_worker_pool
}

flink_down() {
  stop_pid "$POOL_PID" "$POOL_MARKER" "beam worker pool" 15
  if ! cluster_running; then
    say "flink: cluster not running"
    return 0
  fi
  local t0=$SECONDS
  "$FLINK_HOME/bin/stop-cluster.sh" </dev/null >"$FLINK_RUN/stop-cluster.out" 2>&1 9>&- || true
  # stop-cluster.sh signals the daemons and returns; wait until they are gone (bounded), then force.
  local i
  for ((i = 0; i < 60; i++)); do cluster_running || break; sleep 0.5; done
  if cluster_running; then
    local f pid
    for f in "$FLINK_RUN"/pid/*.pid; do
      [[ -f "$f" ]] || continue
      while read -r pid; do
        [[ "$pid" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$FLINK_CONF_DIR" &&
          { warn "flink: killing pid $pid"; kill -KILL "$pid" 2>/dev/null || true; }
      done <"$f"
    done
  fi
  rm -f "$FLINK_RUN"/pid/*.pid
  say "flink: cluster stopped in $((SECONDS - t0)) s"
}

flink_status() {
  local rc=0 ov
  if cluster_running && ov=$(overview 2>/dev/null); then
    say "flink: running at $REST (Flink $(json_field flink-version <<<"$ov"))"
    say "flink:   taskmanagers=$(json_field taskmanagers <<<"$ov") slots=$(json_field slots-available <<<"$ov")/$(json_field slots-total <<<"$ov") free" \
      "jobs running=$(json_field jobs-running <<<"$ov") finished=$(json_field jobs-finished <<<"$ov") cancelled=$(json_field jobs-cancelled <<<"$ov") failed=$(json_field jobs-failed <<<"$ov")"
  elif cluster_running; then
    say "flink: daemons running but REST $REST not answering (logs: $FLINK_LOG_DIR)"
    rc=3
  else
    say "flink: stopped"
    rc=3
  fi
  if pid_alive "$POOL_PID" "$POOL_MARKER"; then
    say "flink: Beam worker pool running (pid $(cat "$POOL_PID"), 127.0.0.1:$POOL_PORT, log $POOL_LOG)"
  else
    # Not an error for the exit code: the code answers "is the cluster up".
    say "flink: Beam worker pool stopped (./run.sh flink-up starts it)"
  fi
  if [[ -n "${FLINK_JOB_SERVER_JAR:-}" && -f "${FLINK_JOB_SERVER_JAR:-}" ]]; then
    say "flink: job server jar $FLINK_JOB_SERVER_JAR"
  elif [[ -s "$JOB_SERVER_JAR" ]]; then
    say "flink: job server jar $JOB_SERVER_JAR"
  else
    say "flink: no Beam job server jar (see flink-conf/README.md)"
  fi
  return "$rc"
}

case "${1:-}" in
  setup) with_lock "$CACHE_DIR/flink.lock" flink_setup ;;
  up) with_lock "$FLINK_RUN/.lock" flink_up ;;
  down) with_lock "$FLINK_RUN/.lock" flink_down ;;
  status) flink_status ;;
  *) echo "usage: $0 setup|up|down|status" >&2; exit 2 ;;
esac
