#!/usr/bin/env bash
# High availability on a MariaDB Galera cluster (docs/high-availability.md): start a 3-node cluster on this
# machine, run the pipeline and the queue consumer against it, SIGKILL one node in the middle of a load and of a
# live stream, and check that every node ends with exactly the right trades and portfolios.
#
# Usage (from the project folder; needs mariadbd with galera-4, rsync, RabbitMQ at 127.0.0.1:5672):
#   bash bench/galera.sh             # every scenario, the table of figures, bench/results-galera.txt (~10 min)
#   ROWS=20000 bash bench/galera.sh  # quicker, with a smaller load
#   bash bench/galera.sh up          # only start the cluster and leave it running (prints its folder)
#   bash bench/galera.sh down DIR    # stop a cluster started with `up`
#   bash bench/galera.sh kill DIR N / restart DIR N   # SIGKILL node N of that cluster / start it again
#
# Nodes: 127.0.0.1:3307, 3308, 3309 (client), 4567-4569 (group communication), 4577-4579 (IST), 4587-4589 (SST,
# rsync); datadirs in a temporary folder, the servers running as the mysql user; 128M buffer pool each. The shared server at 3306 is never touched.
# Every node this script started is stopped when it exits (trap EXIT), whatever happens.
set -u -o pipefail

PROJECT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-/tmp/venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
ROWS=${ROWS:-200000}
STREAM_TRADES=${STREAM_TRADES:-6000}
RESULTS=${RESULTS:-$PROJECT/bench/results-galera.txt}
GALERA_LIB=${GALERA_LIB:-/usr/lib/galera/libgalera_smm.so}
DB=stock_investments
USER_PW="etl:etl-bench-pw"
CLUSTER_ADDRESS="gcomm://127.0.0.1:4567,127.0.0.1:4568,127.0.0.1:4569"

port() { echo $((3306 + $1)); }
node_url() {  # node_url 1 3 -> a URL listing nodes 1 and 3, in that order
    local hosts="" n
    for n in "$@"; do hosts+="${hosts:+,}127.0.0.1:$(port "$n")"; done
    echo "mysql+pymysql://$USER_PW@$hosts/$DB"
}
now() { date +%s.%N; }
elapsed() { "$PYTHON" -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

sql() {  # sql NODE STATEMENT: run as root through the node's socket, tab-separated, no header
    mariadb --no-defaults --socket="$DIR/node$1/mysqld.sock" -u root -N -B -e "$2" 2>/dev/null
}
status() { sql "$1" "SHOW GLOBAL STATUS LIKE '$2'" | cut -f2; }

write_config() {
    local n=$1
    mkdir -p "$DIR/node$n/data"
    cat > "$DIR/node$n/my.cnf" <<EOF
[mysqld]
user=mysql
datadir=$DIR/node$n/data
socket=$DIR/node$n/mysqld.sock
pid-file=$DIR/node$n/mysqld.pid
log-error=$DIR/node$n/error.log
port=$(port "$n")
bind-address=127.0.0.1
skip-name-resolve
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_flush_log_at_trx_commit=2
max_allowed_packet=64M
local_infile=ON
max_connections=200
binlog_format=ROW
default_storage_engine=InnoDB
innodb_autoinc_lock_mode=2
wsrep_on=ON
wsrep_provider=$GALERA_LIB
wsrep_cluster_name=stock_etl_bench
wsrep_cluster_address=$CLUSTER_ADDRESS
wsrep_node_name=node$n
wsrep_node_address=127.0.0.1
wsrep_provider_options="gmcast.listen_addr=tcp://127.0.0.1:$((4566 + n)); ist.recv_addr=127.0.0.1:$((4576 + n)); gcache.size=512M"
wsrep_sst_receive_address=127.0.0.1:$((4586 + n))
wsrep_sst_method=rsync
wsrep_slave_threads=2
EOF
}

start_node() {  # start_node N [--wsrep-new-cluster]; returns once the process runs (not yet synced)
    local n=$1; shift
    local position
    # after a SIGKILL the saved state says seqno -1: recover the last committed position from InnoDB (what
    # galera_recovery does for systemd), so that the node rejoins by IST instead of a full state transfer
    if [ -s "$DIR/node$n/data/grastate.dat" ] && grep -q '^seqno: *-1' "$DIR/node$n/data/grastate.dat"; then
        mariadbd --defaults-file="$DIR/node$n/my.cnf" --wsrep-recover --log-error="$DIR/node$n/recover.log" \
            >/dev/null 2>&1
        position=$(sed -n 's/.*WSREP: Recovered position: *//p' "$DIR/node$n/recover.log" | tail -1)
        [ -n "$position" ] && set -- "$@" "--wsrep-start-position=$position"
    fi
    mariadbd --defaults-file="$DIR/node$n/my.cnf" "$@" >>"$DIR/node$n/stdout.log" 2>&1 &
    echo $! > "$DIR/node$n/pid.bench"
    STARTED_PIDS+=" $!"
}

node_pid() { cat "$DIR/node$1/pid.bench" 2>/dev/null; }
node_alive() { local pid; pid=$(node_pid "$1"); [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

wait_synced() {  # wait_synced N [TIMEOUT]: until node N is Synced and sees the whole cluster it expects
    local n=$1 timeout=${2:-180} start
    start=$(date +%s)
    while [ $(( $(date +%s) - start )) -lt "$timeout" ]; do
        if ! node_alive "$n"; then log "node$n died; see $DIR/node$n/error.log"; tail -20 "$DIR/node$n/error.log" >&2; return 1; fi
        [ "$(status "$n" wsrep_local_state_comment)" = "Synced" ] && [ "$(status "$n" wsrep_ready)" = "ON" ] && return 0
        sleep 0.2
    done
    log "node$n not synced after ${timeout}s"; tail -20 "$DIR/node$n/error.log" >&2
    return 1
}

wait_cluster_size() {  # wait_cluster_size NODE SIZE
    local start; start=$(date +%s)
    while [ $(( $(date +%s) - start )) -lt 120 ]; do
        [ "$(status "$1" wsrep_cluster_size)" = "$2" ] && return 0
        sleep 0.2
    done
    return 1
}

kill_node() {  # kill_node N: SIGKILL, no shutdown of any kind
    local pid; pid=$(node_pid "$1")
    kill -KILL "$pid" 2>/dev/null
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
}

stop_nodes() {  # every node this script started: the pids it kept, and those in the pid files (a restart)
    local pid n
    for n in 1 2 3; do
        pid=$(node_pid "$n")
        [ -n "$pid" ] && [[ " $STARTED_PIDS " != *" $pid "* ]] && grep -qs mariadbd "/proc/$pid/cmdline" &&
            grep -qs "$DIR/node$n/my.cnf" "/proc/$pid/cmdline" && STARTED_PIDS+=" $pid"
    done
    for pid in $STARTED_PIDS; do kill -TERM "$pid" 2>/dev/null; done
    for pid in $STARTED_PIDS; do
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null
    done
    STARTED_PIDS=""
}

cluster_up() {
    local n t0
    t0=$(now)
    for n in 1 2 3; do write_config "$n"; done
    chown -R mysql:mysql "$DIR"  # the joiners' rsync daemon must be able to write the datadir (as root it runs as nobody)
    mariadb-install-db --defaults-file="$DIR/node1/my.cnf" --auth-root-authentication-method=socket \
        --skip-test-db >"$DIR/node1/install.log" 2>&1 || { log "mariadb-install-db failed: $DIR/node1/install.log"; return 1; }
    start_node 1 --wsrep-new-cluster
    wait_synced 1 || return 1
    sql 1 "CREATE USER IF NOT EXISTS ${USER_PW%%:*}@'%' IDENTIFIED BY '${USER_PW#*:}';
           GRANT ALL ON *.* TO ${USER_PW%%:*}@'%';" || { log "cannot create the user"; return 1; }
    for n in 2 3; do start_node "$n"; wait_synced "$n" || return 1; done
    wait_cluster_size 1 3 || { log "the cluster did not reach 3 nodes"; return 1; }
    log "cluster of 3 nodes formed in $(elapsed "$t0" "$(now)") s ($DIR)"
}

STARTED_PIDS=""
case "${1:-all}" in
    up)
        DIR=$(mktemp -d /tmp/galera-bench.XXXXXX)
        cluster_up || { stop_nodes; exit 1; }
        echo "$DIR"
        echo "nodes: $(node_url 1 2 3)"
        exit 0 ;;
    down)
        DIR=${2:?usage: galera.sh down DIR}
        for n in 1 2 3; do STARTED_PIDS+=" $(node_pid "$n")"; done
        stop_nodes
        rm -rf "$DIR"
        exit 0 ;;
    kill|restart)  # galera.sh kill|restart DIR N: SIGKILL node N of a cluster started with `up`, or start it again
        DIR=${2:?usage: galera.sh kill|restart DIR N}
        if [ "$1" = kill ]; then kill_node "${3:?}"; else t0=$(now); start_node "${3:?}"; wait_synced "$3" || exit 1
            log "node$3 synced after $(elapsed "$t0" "$(now)") s"; fi
        exit 0 ;;
    all) ;;
    *) echo "usage: galera.sh [all | up | down DIR | kill DIR N | restart DIR N]" >&2; exit 2 ;;
esac

DIR=$(mktemp -d /tmp/galera-bench.XXXXXX)
cleanup() { stop_nodes; [ -n "${KEEP_DIR:-}" ] || rm -rf "$DIR"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
cluster_up || exit 1

# ---------------------------------------------------------------------------------------------- the scenarios
cd "$PROJECT" || exit 1
mkdir -p "$DIR/work/a" "$DIR/work/b" "$DIR/logs"
LOGS=$DIR/logs
N1=$(node_url 1); N2=$(node_url 2); N3=$(node_url 3)
check() { "$PYTHON" bench/galera_check.py "$@"; }
trades_on() { sql "$1" "SET SESSION wsrep_sync_wait=1; SELECT COUNT(*) FROM $DB.transactions" || echo "?"; }
retries_in() { grep -c -E "trying again|reconnecting until it works|working again" "$1" 2>/dev/null; }
first_error() { grep -m1 '^error:' "$1" 2>/dev/null || echo "-"; }
rejoin() {  # rejoin N: restart node N, wait until synced; sets REJOINED to "SECONDS s (IST|SST)"
    local t0 how
    t0=$(now)
    start_node "$1"  # not in a subshell: the pid must reach STARTED_PIDS
    wait_synced "$1" 300 || { REJOINED="failed"; return 1; }
    how="state transfer (SST)"; tail -100 "$DIR/node$1/error.log" | grep -q "IST received" && how="incremental (IST)"
    REJOINED="$(elapsed "$t0" "$(now)") s, $how"
}
ROWS_LINE=()
row() { ROWS_LINE+=("$(printf '%-3s %-44s %s' "$1" "$2" "$3")"); }

log "generating two files of $ROWS trades"
"$PYTHON" generate_dummy_data.py --rows "$ROWS" --seed 42 --out "$DIR/work/a/transactions.csv" --quiet >/dev/null &&
    "$PYTHON" generate_dummy_data.py --rows "$ROWS" --seed 43 --out "$DIR/work/b/transactions.csv" --quiet \
    >/dev/null || exit 1
rm "$DIR/work/b/market_prices.csv" "$DIR/work/b/corporate_actions.csv"  # other closes and dividends than a's

# a. master_etl through node 1 alone; node 2 SIGKILLed in the middle of the 200,000-trade load
log "a: master_etl through node 1, node 2 killed mid-load"
bytes0=$(status 1 wsrep_replicated_bytes)
t0=$(now)
"$PYTHON" master_etl.py --no-generate --no-plots --input "$DIR/work/a/transactions.csv" --database-url "$N1" \
    >"$LOGS/a.out" 2>"$LOGS/a.err" &
etl=$!
check batch-running "$N3" "a/transactions.csv" >/dev/null
sleep "${KILL_AFTER:-2}"
before_a=$(trades_on 3)
kill -0 $etl 2>/dev/null && during_a="yes" || during_a="no (it had finished)"
kill_node 2
killed_a=$(elapsed "$t0" "$(now)")
wait $etl; rc_a=$?
took_a=$(elapsed "$t0" "$(now)")
after_a=$(trades_on 1)
bytes1=$(status 1 wsrep_replicated_bytes)
rejoin 2; rejoin_a=$REJOINED
log "a: exit $rc_a after $took_a s; node 2 rejoined in $rejoin_a"
row a "node killed" "node 2 (not the one used) at ${killed_a} s, load running: $during_a"
row a "master_etl" "exit $rc_a in $took_a s (load stage $(grep -o '^\[2/5\] load: .*(\([0-9.]* s\))$' "$LOGS/a.out" | grep -o '[0-9.]* s)$' | tr -d ')'))"
row a "trades on the cluster before / after" "$before_a / $after_a"
row a "retry lines logged" "$(retries_in "$LOGS/a.err")"
row a "write set replicated by node 1 (all stages)" "$(( (bytes1 - bytes0) / 1048576 )) MiB, $(( (bytes1 - bytes0) / (ROWS > 0 ? ROWS : 1) )) bytes per trade"
row a "node 2 back in the cluster (synced)" "$rejoin_a"

# b. a load connected to node 1 (URL lists node 1, node 3); node 1 SIGKILLed mid-load; then a re-run
log "b: load through node1,node3, node 1 killed mid-load"
t0=$(now)
"$PYTHON" load_transactions.py "$DIR/work/b/transactions.csv" --database-url "$(node_url 1 3)" \
    >"$LOGS/b.out" 2>"$LOGS/b.err" &
load=$!
check batch-running "$N3" "b/transactions.csv" >/dev/null
sleep "${KILL_AFTER:-2}"
before_b=$(trades_on 3)
kill -0 $load 2>/dev/null && during_b="yes" || during_b="no (it had finished)"
kill_node 1
killed_b=$(elapsed "$t0" "$(now)")
wait $load; rc_b=$?
took_b=$(elapsed "$t0" "$(now)")
t1=$(now)
"$PYTHON" load_transactions.py "$DIR/work/b/transactions.csv" --database-url "$(node_url 1 3)" \
    >"$LOGS/b2.out" 2>"$LOGS/b2.err"; rc_b2=$?
took_b2=$(elapsed "$t1" "$(now)")
after_b=$(trades_on 3)
rejoin 1; rejoin_b=$REJOINED
log "b: exit $rc_b, re-run exit $rc_b2; node 1 rejoined in $rejoin_b"
row b "node killed" "node 1 (the one used) at ${killed_b} s, load running: $during_b"
row b "the load" "exit $rc_b in $took_b s, $(wc -l <"$LOGS/b.err") stderr line(s): $(first_error "$LOGS/b.err")"
row b "re-run (same command)" "exit $rc_b2 in $took_b2 s: $(tail -1 "$LOGS/b2.out")"
row b "trades on the cluster before / after" "$before_b / $after_b"
row b "retry lines logged (load, re-run)" "$(retries_in "$LOGS/b.err"), $(retries_in "$LOGS/b2.err")"
row b "node 1 back in the cluster (synced)" "$rejoin_b"

# c. the queue consumer connected to node 2 (URL lists node 2, node 3), node 2 SIGKILLed mid-stream
QUEUE="galera_bench_$$"
PREFIX="GAL$$"
RATE=${RATE:-300}
log "c: live stream of $STREAM_TRADES trades at $RATE/s through node2,node3, node 2 killed mid-stream"
"$PYTHON" load_transactions.py --queue --queue-name "$QUEUE" --report-every 0 --database-url "$(node_url 2 3)" \
    >"$LOGS/c.out" 2>"$LOGS/c.err" &
consumer=$!
sleep 3
t0=$(now)
check publish --queue "$QUEUE" --count "$STREAM_TRADES" --rate "$RATE" --prefix "$PREFIX" >"$LOGS/publish.out" 2>&1 &
publisher=$!
sleep "$("$PYTHON" -c "print($STREAM_TRADES / $RATE / 3)")"
before_c=$(sql 3 "SELECT COUNT(*) FROM $DB.transactions WHERE txn_ref LIKE '$PREFIX-%'")
kill_node 2
killed_c=$(elapsed "$t0" "$(now)")
wait $publisher
check wait-trades --prefix "$PREFIX" --count "$STREAM_TRADES" --timeout 300 "$N3" >"$LOGS/wait.out"; rc_wait=$?
took_c=$(elapsed "$t0" "$(now)")
kill -TERM $consumer; wait $consumer; rc_c=$?
after_c=$(sql 3 "SELECT COUNT(*) FROM $DB.transactions WHERE txn_ref LIKE '$PREFIX-%'")
check delete-queue "$QUEUE" >/dev/null 2>&1
rejoin 2; rejoin_c=$REJOINED
log "c: consumer exit $rc_c; node 2 rejoined in $rejoin_c"
row c "node killed" "node 2 (the consumer's) at ${killed_c} s after the first publish"
row c "stream" "$(cat "$LOGS/publish.out"); all stored after $took_c s: $([ $rc_wait = 0 ] && echo yes || echo NO)"
row c "consumer" "exit $rc_c: $(tail -1 "$LOGS/c.out")"
row c "stream trades stored before / after" "$before_c / $after_c (published $STREAM_TRADES)"
row c "outage lines logged" "$(retries_in "$LOGS/c.err")"
row c "node 2 back in the cluster (synced)" "$rejoin_c"

# d. every node holds the same, right data
log "d: comparing the nodes"
wait_cluster_size 1 3
"$PYTHON" update_portfolio.py --quiet --database-url "$(node_url 1 2 3)" >"$LOGS/d-update.out" 2>&1
check compare --expect-trades $((2 * ROWS + STREAM_TRADES)) "$N1" "$N2" "$N3" >"$LOGS/compare.out" 2>&1; rc_cmp=$?
check full-equals "$N1" "$N2" "$N3" >"$LOGS/full.out" 2>&1; rc_full=$?
row d "trades, checksums, batches on the 3 nodes" "$(tail -1 "$LOGS/compare.out") (expected $((2 * ROWS + STREAM_TRADES)) trades, no batch running)"
row d "portfolios vs update_portfolio --full" "$(tail -1 "$LOGS/full.out")"

{
    echo "bench/galera.sh: 3-node MariaDB Galera cluster on one machine ($(mariadbd --version | awk '{print $3}'), galera-4, rsync SST), $(nproc) cores"
    echo "$(date '+%Y-%m-%d %H:%M'); ROWS=$ROWS per file, STREAM_TRADES=$STREAM_TRADES at $RATE/s"
    echo
    printf '%s\n' "${ROWS_LINE[@]}"
    echo
    echo "per node (d):"
    sed 's/^/  /' "$LOGS/compare.out"
    echo
    echo "log lines (stderr) of the runs:"
    for f in a b b2 c; do
        [ -s "$LOGS/$f.err" ] && sed "s/^/  $f: /" "$LOGS/$f.err" | grep -v "^  [a-z0-9]*: *$" | cut -c1-220 | head -8
    done
} | tee "$RESULTS"
[ "$rc_cmp" = 0 ] && [ "$rc_full" = 0 ] && [ "$rc_a" = 0 ] && [ "$rc_b2" = 0 ] && [ "$rc_wait" = 0 ]
