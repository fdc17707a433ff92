#!/usr/bin/env bash
# Single entry point: installs what the project needs, runs its services, tests, demo and benchmarks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# shellcheck source=scripts/lib.sh
source scripts/lib.sh

BEAM_VERSION=2.77.0
PRISM_BIN="$CACHE_DIR/bin/prism"
DEBIAN_PACKAGES=(openjdk-17-jre-headless maven curl ca-certificates chromium libhyperscan-dev)

usage() {
  cat <<'EOF'
usage: ./run.sh COMMAND [ARGS]

  setup                 install everything (Debian packages, .venv, Kafka jars, Prism, Flink); quick when done
  setup STEP...         only some steps: debian python kafka prism flink
  kafka-up|kafka-down|kafka-status            single-node Kafka (KRaft) on 127.0.0.1:${KAFKA_PORT:-9092}
  kafka-secure-up|kafka-secure-down|kafka-secure-status   SASL/TLS/ACL Kafka of the security tests (:19192)
  clickhouse-up|clickhouse-down|clickhouse-status   ClickHouse server (scripts/clickhouse.sh)
  flink-up|flink-down|flink-status            Flink 2.2 standalone cluster on 127.0.0.1:8081 + Beam worker pool
  demo [ARGS]           start Kafka and run python -m pipeline.demo ARGS
  test [PYTEST ARGS]    set up, start Kafka and ClickHouse, run pytest on tests/
  lint                  ruff check .
  bench NAME [ARGS]     python -m bench.NAME ARGS

Env: KAFKA_PORT, KAFKA_DATA_DIR, KEEP_SERVICES=1 (test leaves the services it started running).
EOF
}

setup_debian() {
  apt_ensure "${DEBIAN_PACKAGES[@]}"
  say "debian: java $(java -version 2>&1 | head -1 | cut -d'"' -f2), $(mvn -v 2>/dev/null | head -1 | sed 's/\x1b\[[0-9;]*m//g')"
}

setup_python() {
  local py=${PYTHON:-}
  if [[ -z "$py" ]]; then
    py=$(command -v python3.11 || command -v python3 || true)
  fi
  [[ -n "$py" ]] || die "python3 not found (set PYTHON=/path/to/python3.11)"
  local req=(requirements.txt requirements-dev.txt) pipargs=()
  [[ -f constraints.txt ]] && pipargs+=(-c constraints.txt)
  local h stamp="$VENV/.setup-stamp"
  h=$(inputs_hash "${req[@]}" constraints.txt "$("$py" -V 2>&1)")
  if [[ -x "$PY" ]] && stamp_ok "$stamp" "$h"; then
    say "python: .venv up to date"
    setup_native
    return 0
  fi
  if [[ ! -x "$PY" ]]; then
    say "python: creating .venv with $("$py" -V 2>&1)"
    "$py" -m venv "$VENV"
  fi
  say "python: pip install -r requirements.txt -r requirements-dev.txt (first run ~1-2 min)"
  local t0=$SECONDS
  "$PY" -m pip install -q --disable-pip-version-check -r requirements.txt -r requirements-dev.txt "${pipargs[@]}"
  stamp_write "$stamp" "$h"
  say "python: done in $((SECONDS - t0)) s"
  setup_native
}

# The native fast path of transforms/unpack.py (native/: Rust, PyO3), built with maturin into .venv and
# rebuilt only when its sources change. A failed build fails setup: the tests must not silently run only
# the Python fallback (which stays for Beam workers without the wheel).
setup_native() {
  local h stamp="$VENV/.native-stamp" wheels="$CACHE_DIR/wheels"
  h=$(inputs_hash native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src/*.rs "$("$PY" -V 2>&1)")
  if stamp_ok "$stamp" "$h" && "$PY" -c "import perf_native" 2>/dev/null; then
    say "native: perf_native up to date"
    return 0
  fi
  if ! command -v cargo >/dev/null && [[ -x "$HOME/.cargo/bin/cargo" ]]; then PATH="$HOME/.cargo/bin:$PATH"; fi
  command -v cargo >/dev/null || die "native: cargo not found (a Rust toolchain is needed to build native/: https://rustup.rs)"
  # hs.rs links Debian's libhs (the classifier's native scan loop): `./run.sh setup debian` installs it
  [[ -e /usr/include/hs/hs.h ]] || die "native: Hyperscan headers missing (Debian libhyperscan-dev): ./run.sh setup debian"
  say "native: building perf_native with $(cargo -V | cut -d' ' -f1-2) (first build ~30 s: crates download + compile)"
  local t0=$SECONDS
  rm -rf "$wheels" && mkdir -p "$wheels"
  # --auditwheel skip: the wheel links Debian's libhs.so.5 (libhyperscan-dev, a setup package), not bundled
  "$PY" -m maturin build --release --locked --auditwheel skip -m native/Cargo.toml -i "$PY" -o "$wheels" ||
    die "native: maturin build failed (see above)"
  "$PY" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheels"/perf_native-*.whl ||
    die "native: installing the wheel failed"
  "$PY" -c "import perf_native" || die "native: perf_native does not import after the install"
  stamp_write "$stamp" "$h"
  say "native: built and installed in $((SECONDS - t0)) s"
}

setup_kafka() { scripts/kafka.sh setup; }

setup_prism() {
  # Beam's DirectRunner would download Prism from GitHub (unreachable); build the same version from source.
  if [[ -x "$PRISM_BIN" ]] && command -v go >/dev/null &&
    go version -m "$PRISM_BIN" 2>/dev/null | grep -q "github.com/apache/beam/sdks/v2[[:space:]]*v$BEAM_VERSION"; then
    say "prism: .cache/bin/prism v$BEAM_VERSION present"
    return 0
  fi
  command -v go >/dev/null || die "prism: go toolchain not found (needed to build Prism v$BEAM_VERSION)"
  say "prism: go install prism@v$BEAM_VERSION (first run several minutes)"
  local t0=$SECONDS
  mkdir -p "$CACHE_DIR/bin"
  GOBIN="$CACHE_DIR/bin" GOFLAGS=-mod=mod go install "github.com/apache/beam/sdks/v2/go/cmd/prism@v$BEAM_VERSION"
  say "prism: built in $((SECONDS - t0)) s"
}

setup_flink() { scripts/flink.sh setup; }

do_setup() {
  local steps=("$@") s
  ((${#steps[@]})) || steps=(debian python kafka prism flink)
  for s in "${steps[@]}"; do
    case "$s" in
      debian | python | kafka | prism | flink) "setup_$s" ;;
      *) die "unknown setup step '$s' (debian python kafka prism flink)" ;;
    esac
  done
}

clickhouse() {
  [[ -x scripts/clickhouse.sh || -f scripts/clickhouse.sh ]] || die "scripts/clickhouse.sh not found"
  bash scripts/clickhouse.sh "$@"
}

# Services that were not running when `test` began (Kafka, ClickHouse, and Flink if a test starts it) are
# stopped again when it ends (unless KEEP_SERVICES=1),
# so a CI run or a developer's run leaves the machine as it found it.
STARTED_SERVICES=()
stop_started_services() {
  local rc=$? s
  if [[ "${KEEP_SERVICES:-0}" != 1 ]]; then
    for s in "${STARTED_SERVICES[@]}"; do
      case "$s" in
        kafka) scripts/kafka.sh down || true ;;
        kafka-secure) scripts/kafka_secure.sh down || true ;;
        clickhouse) clickhouse down || true ;;
        flink) scripts/flink.sh down || true ;;
      esac
    done
  fi
  return "$rc"
}

# When this checkout's broker is not running but the Kafka ports are taken (e.g. a broker of another
# checkout on the same machine), run the suite on a free port pair with its own data dir.
pick_kafka_port() {
  local port=${KAFKA_PORT:-9092} p props
  scripts/kafka.sh status >/dev/null 2>&1 && return 0
  port_open 127.0.0.1 "$port" || port_open 127.0.0.1 "$((port + 1))" || return 0
  # A broker of this checkout that is starting or stopping (another process restarting it) is not a
  # foreign server: kafka.sh serializes with it. Only a server of another checkout triggers the fallback.
  if [[ "$port" == 9092 ]]; then props="$RUN_DIR/kafka/server.properties"; else props="$RUN_DIR/kafka-$port/server.properties"; fi
  find_pid kafka.Kafka "$props" >/dev/null && return 0
  # Ports derived from this checkout's path (20092..32592, below the ephemeral range), so two clones
  # that fall back at the same moment do not race for the same pair.
  local base=$((20000 + $(cksum <<<"$ROOT" | cut -d' ' -f1) % 126 * 100 + 92))
  for p in "$base" $((base + 7)) $((base + 23)) $((base + 51)); do
    if ! port_open 127.0.0.1 "$p" && ! port_open 127.0.0.1 "$((p + 1))"; then
      warn "kafka: 127.0.0.1:$port is taken by a server this checkout did not start; using port $p"
      export KAFKA_PORT=$p KAFKA_CONTROLLER_PORT=$((p + 1))
      return 0
    fi
  done
  die "kafka: port $port and the fallbacks are taken"
}

run_test() {
  do_setup
  pick_kafka_port
  # tests/conftest.py and tests/test_infra.py read the broker address from here.
  export KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT:-9092}"
  if ! scripts/kafka.sh status >/dev/null 2>&1; then STARTED_SERVICES+=(kafka); fi
  # tests/test_kafka_security.py starts and stops it itself; this also covers a pytest that was killed.
  if ! scripts/kafka_secure.sh status >/dev/null 2>&1; then STARTED_SERVICES+=(kafka-secure); fi
  if ! clickhouse status >/dev/null 2>&1; then STARTED_SERVICES+=(clickhouse); fi
  # Tests may start Flink themselves (./run.sh flink-up); stop it afterwards if it was not running before.
  if ! scripts/flink.sh status >/dev/null 2>&1; then STARTED_SERVICES+=(flink); fi
  trap stop_started_services EXIT
  trap 'exit 143' TERM
  trap 'exit 130' INT
  scripts/kafka.sh up
  if ! clickhouse up; then
    # A ClickHouse of another checkout (same project, same config) may hold the ports: tests only need a
    # server that answers, and they create their own databases.
    curl -sf --max-time 3 "http://127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}/ping" | grep -q Ok ||
      die "clickhouse: could not start, and nothing answers on 127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}"
    warn "clickhouse: using the server that already answers on 127.0.0.1:${CLICKHOUSE_HTTP_PORT:-8123}"
  fi
  # Default to the whole tests/ directory unless the arguments name test files or directories.
  local rc=0 a targets=(tests) tb=(--tb=native)
  for a in "$@"; do [[ "$a" != -* && -e "${a%%::*}" ]] && targets=() && break; done
  # Python 3.11.7's ast.parse can raise "SystemError: AST constructor recursion depth mismatch"
  # (cpython gh-106905) while pytest formats a failure, and the INTERNALERROR ends the whole run.
  # Native tracebacks do not parse source. An explicit --tb in the arguments wins.
  for a in "$@"; do [[ "$a" == --tb* ]] && tb=(); done
  say "test: pytest ${targets[*]} -q ${tb[*]} $*"
  "$PY" -m pytest "${targets[@]}" -q "${tb[@]}" "$@" || rc=$?
  if ((rc == 5)); then
    echo "test: pytest collected no tests; treating as failure" >&2
    rc=1
  fi
  return "$rc"
}

cmd=${1:-}
(($#)) && shift
case "$cmd" in
  "" | -h | --help | help) usage ;;
  setup) do_setup "$@" ;;
  kafka-up) do_setup kafka && scripts/kafka.sh up ;;
  kafka-down) scripts/kafka.sh down ;;
  kafka-status) scripts/kafka.sh status ;;
  kafka-secure-up) do_setup kafka && scripts/kafka_secure.sh up ;;
  kafka-secure-down) scripts/kafka_secure.sh down ;;
  kafka-secure-status) scripts/kafka_secure.sh status ;;
  clickhouse-up) clickhouse up ;;
  clickhouse-down) clickhouse down ;;
  clickhouse-status) clickhouse status ;;
  flink-up) do_setup python flink && scripts/flink.sh up ;;
  flink-down) scripts/flink.sh down ;;
  flink-status) scripts/flink.sh status ;;
  demo)
    do_setup debian python kafka prism
    scripts/kafka.sh up
    exec "$PY" -m pipeline.demo "$@"
    ;;
  test) run_test "$@" ;;
  lint) do_setup python && exec "$VENV/bin/ruff" check . ;;
  bench)
    (($#)) || die "usage: ./run.sh bench NAME [ARGS]"
    name=$1
    shift
    do_setup python
    exec "$PY" -m "bench.$name" "$@"
    ;;
  *)
    usage >&2
    die "unknown command '$cmd'"
    ;;
esac
