# Shared shell helpers for run.sh and scripts/*.sh. Source it; it defines functions and ROOT only.
# shellcheck shell=bash

# shellcheck disable=SC2034  # the variables below are used by the scripts that source this file
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="$ROOT/.cache"
RUN_DIR="$ROOT/.run"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

say() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
warn() { printf '[%s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$(date +%H:%M:%S)" "$*" >&2; exit 1; }

# Hash of the given files' contents plus any extra words; a changed input means a changed stamp.
inputs_hash() {
  local words=()
  local f
  for f in "$@"; do
    if [[ -f "$f" ]]; then words+=("$f=$(sha256sum <"$f" | cut -c1-64)"); else words+=("$f"); fi
  done
  printf '%s\n' "${words[@]}" | sha256sum | cut -c1-16
}

# stamp_ok FILE HASH: true when FILE holds HASH (the step already ran with these inputs).
stamp_ok() { [[ -f "$1" ]] && [[ "$(cat "$1")" == "$2" ]]; }
stamp_write() { mkdir -p "$(dirname "$1")" && printf '%s' "$2" >"$1"; }

# pid_alive PIDFILE MARKER: true when the pid in PIDFILE runs and its command line contains MARKER.
# The marker check stops us from signalling an unrelated process that reused a stale pid.
pid_alive() {
  local pidfile=$1 marker=$2 pid
  [[ -f "$pidfile" ]] || return 1
  pid=$(cat "$pidfile" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# find_pid MARKER...: first pid whose command line contains every MARKER (adopts a server whose pid
# file was lost, e.g. after two concurrent starts). The markers are absolute paths unique to this checkout.
find_pid() {
  local d cmd m ok
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    ok=1
    for m in "$@"; do [[ "$cmd" == *"$m"* ]] || { ok=0; break; }; done
    ((ok)) && { echo "${d#/proc/}"; return 0; }
  done
  return 1
}

# with_lock LOCKFILE CMD...: run CMD holding an exclusive lock, so concurrent up/down calls (several
# developers or test processes share one checkout) serialize instead of starting two servers.
# The lock fd is closed for CMD's children (9>&- where they are spawned) so a daemon never holds it.
with_lock() {
  local lock=$1
  shift
  mkdir -p "$(dirname "$lock")"
  exec 9>"$lock"
  flock -w 300 9 || die "could not take $lock within 300 s"
  "$@"
  local rc=$?
  exec 9>&-
  return "$rc"
}

# stop_pid PIDFILE MARKER NAME [GRACE_SECONDS]: SIGTERM, wait, SIGKILL after the grace period.
stop_pid() {
  local pidfile=$1 marker=$2 name=$3 grace=${4:-30} pid i
  if ! pid_alive "$pidfile" "$marker"; then
    rm -f "$pidfile"
    say "$name: not running"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace * 5; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$pid" 2>/dev/null; then
    warn "$name (pid $pid) still running after ${grace}s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
  say "$name: stopped (pid $pid)"
}

# port_open HOST PORT: true when something accepts TCP connections there.
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# tail_log FILE [N]: print the last N lines of a log to stderr, for error messages.
tail_log() {
  local f=$1 n=${2:-40}
  if [[ -f "$f" ]]; then
    printf -- '----- last %s lines of %s -----\n' "$n" "$f" >&2
    tail -n "$n" "$f" >&2
    printf -- '-----\n' >&2
  else
    printf '(no log at %s)\n' "$f" >&2
  fi
}

# rotate_log FILE: keep one previous copy so a restart does not erase the evidence of a crash.
rotate_log() { [[ -f "$1" ]] && mv -f "$1" "$1.1"; return 0; }

# apt_ensure PKG...: install Debian packages that are missing; apt-get update only when needed.
apt_ensure() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  command -v apt-get >/dev/null || die "missing Debian packages (${missing[*]}) and no apt-get"
  say "apt: installing ${missing[*]}"
  local sudo=()
  [[ $(id -u) -eq 0 ]] || sudo=(sudo)
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Start a Kafka broker JVM (kafka.Kafka PROPS) detached and wait until it is ready: its own log says started
# (a different server answering on the port is not our broker), PORT listens and the function ANSWERS
# succeeds. Args: NAME LIBS PROPS LOG PIDFILE MARKER PORT TIMEOUT_S HEAP_OPTS ANSWERS READY_TEXT.
# setsid + no inherited stdio: the broker outlives the script and never holds a caller's pipe open.
start_kafka_jvm() {
  local name=$1 libs=$2 props=$3 log=$4 pidfile=$5 marker=$6 port=$7 timeout=$8 heap=$9 answers=${10} ready=${11}
  local t0=$SECONDS
  rotate_log "$log"
  # shellcheck disable=SC2086
  setsid java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
    -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
    -Dorg.slf4j.simpleLogger.showDateTime=true \
    -Dorg.slf4j.simpleLogger.dateTimeFormat='yyyy-MM-dd HH:mm:ss.SSS' \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=info \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients=warn \
    -Dorg.slf4j.simpleLogger.log.org.apache.kafka.common.config=warn \
    -cp "$libs/*" kafka.Kafka "$props" </dev/null >"$log" 2>&1 9>&- &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! pid_alive "$pidfile" "$marker"; then
      tail_log "$log"
      rm -f "$pidfile"
      die "$name: broker exited during start-up (log: $log)"
    fi
    if grep -q 'Kafka Server started' "$log" && port_open 127.0.0.1 "$port" && "$answers"; then
      say "$name: up on $ready (pid $(cat "$pidfile"), ready in $((SECONDS - t0)) s)"
      return 0
    fi
    sleep 0.5
  done
  tail_log "$log"
  die "$name: broker did not answer on 127.0.0.1:$port within ${timeout}s (log: $log)"
}
