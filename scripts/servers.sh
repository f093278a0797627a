# shellcheck shell=bash
# Throwaway PostgreSQL, MariaDB and SQL Server (pysqlbridge) servers for
# dbmanager's tests and benches.
#
# Source this file, then call:
#   dbm_start_postgres   PostgreSQL (15) on a free 127.0.0.1 port, in a fresh temp dir
#   dbm_start_mariadb    MariaDB (installs mariadb-server with apt if missing)
#   dbm_start_mssql      a SQL Server wire-protocol peer: the PyPI package
#                        pysqlbridge in a venv under a cache folder, serving
#                        the CSV tables in tests/data/mssql (read-only)
#   dbm_start_pgbouncer  pgbouncer (installs it with apt if missing) in transaction
#                        pooling mode in front of the PostgreSQL started above,
#                        with a server pool smaller than the tests' client threads
#   dbm_start_pg_replica a streaming replica (pg_basebackup -R, hot standby) of
#                        the PostgreSQL started above, on its own port
#   dbm_start_pushgateway a Prometheus Pushgateway (installs it with apt if missing)
#   dbm_need_promtool    Prometheus' promtool (installs the prometheus package
#                        with apt if missing; no server is started)
#   dbm_need_pyway       Pyway (PyPI) in a venv under the cache folder, for the
#                        migration-history tests; no server is started
#   dbm_need_sqlite3     the sqlite3 shell (apt if missing), whose .dump a
#                        migration test replays
#   dbm_private_server postgres|mariadb
#                        another server of its own (temp dir, free port) for a
#                        test that stops, restarts or freezes it; prints
#                        KEY=VALUE lines: URL, ADMIN_URL, PID, DIR. Control it with
#                        dbm_private_ctl DIR stop|start|pid|remove|promote
#   dbm_private_server postgres-standby PRIMARY_DIR
#                        a streaming standby of the private PostgreSQL in
#                        PRIMARY_DIR (for a failover test: stop the primary,
#                        then dbm_private_ctl STANDBY_DIR promote)
#   dbm_print_env        prints the exported URLs with the passwords masked
#   dbm_stop_all         stops whatever was started and removes the temp dirs
#                        (safe to call twice, or when nothing was started)
#
# Exported after dbm_start_postgres:
#   DBMANAGER_TEST_POSTGRES_URL        postgresql://app:<pw>@127.0.0.1:<port>/appdb
#   DBMANAGER_TEST_POSTGRES_ADMIN_URL  postgresql://postgres:<pw>@127.0.0.1:<port>/appdb
#   DBMANAGER_TEST_POSTGRES_PGDATA     the cluster's data directory
#   DBMANAGER_TEST_POSTGRES_PID        the postmaster's pid
# Exported after dbm_start_pg_replica:
#   DBMANAGER_TEST_POSTGRES_REPLICA_URL       postgresql://app:<pw>@127.0.0.1:<replica port>/appdb
#   DBMANAGER_TEST_POSTGRES_REPLICA_ADMIN_URL the same as postgres (pg_wal_replay_pause needs it)
#   DBMANAGER_TEST_POSTGRES_REPLICA_PID       the standby's postmaster pid
# Exported after dbm_start_mariadb:
#   DBMANAGER_TEST_MYSQL_URL           mysql://app:<pw>@127.0.0.1:<port>/appdb
#   DBMANAGER_TEST_MYSQL_ADMIN_URL     mysql://root:<pw>@127.0.0.1:<port>/appdb
#   DBMANAGER_TEST_MYSQL_PID           mariadbd's pid
# Exported after dbm_start_pushgateway:
#   DBMANAGER_TEST_PUSHGATEWAY_URL     http://127.0.0.1:<port>
# Exported after dbm_need_promtool:
#   DBMANAGER_TEST_PROMTOOL            the path of promtool (checks the metrics text)
# Exported after dbm_need_pyway:
#   DBMANAGER_TEST_PYWAY               the path of the `pyway` command
# Exported after dbm_start_mssql:
#   DBMANAGER_TEST_MSSQL_URL           mssql://app:<pw>@127.0.0.1:<port>/bridge?encrypt=true&trust_server_certificate=true
#   DBMANAGER_TEST_MSSQL_PID           the pysqlbridge process's pid
# Exported after dbm_start_pgbouncer:
#   DBMANAGER_TEST_PGBOUNCER_URL       postgresql://app:<pw>@127.0.0.1:<port>/appdb (through pgbouncer)
#   DBMANAGER_TEST_PGBOUNCER_PID       pgbouncer's pid
#
# Every step has a bounded timeout. On failure a function prints one line
# "dbm: ERROR: ..." (plus the tail of the server log) to stderr, cleans up what
# it started and returns non-zero. The functions do not rely on `set -e` and
# behave the same with or without it.
#
# Knobs (environment, all optional):
#   DBM_PG_BIN              directory with initdb/pg_ctl/psql (default: PostgreSQL 15's)
#   DBM_PG_MAX_CONNECTIONS  default 300
#   DBM_MY_MAX_CONNECTIONS  default 500
#   DBM_START_TIMEOUT       seconds to wait for a server to accept connections (default 60)
#   DBM_TMPDIR              where the temp dirs go (default /tmp; must be reachable by
#                           the postgres and mysql OS users)
#   DBM_KEEP_DIRS=1         keep the temp dirs (logs) after dbm_stop_all
#   DBM_PYSQLBRIDGE_VERSION pysqlbridge version to install (default 2.1.3, the one tested)
#   DBM_PYWAY_VERSION       pyway version to install (default 0.3.33, the one tested)
#   DBM_CACHE_DIR           where the pysqlbridge and pyway venvs live
#                           (default ${XDG_CACHE_HOME:-~/.cache}/dbmanager)

# ---------------------------------------------------------------- helpers

_dbm_log() { printf 'dbm: %s\n' "$*" >&2; }

# _dbm_fail MESSAGE [LOGFILE...]: one clear line, then the tail of each log.
_dbm_fail() {
    local msg=$1 f
    shift
    printf 'dbm: ERROR: %s\n' "$msg" >&2
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf 'dbm: ---- last lines of %s ----\n' "$f" >&2
            tail -n 25 -- "$f" >&2 || true
            printf 'dbm: ---- end of %s ----\n' "$f" >&2
        fi
    done
    # Returns 0 on purpose: callers `return 1` after cleaning up, and a
    # non-zero status here would end a `set -e` caller before the cleanup.
    return 0
}

# Alphanumeric only, so it can go into a URL and an SQL literal unquoted.
_dbm_password() {
    local pw='' chunk
    while ((${#pw} < 24)); do
        chunk=$(head -c 512 /dev/urandom | LC_ALL=C tr -dc 'A-Za-z0-9') || return 1
        pw+=$chunk
    done
    printf '%s' "${pw:0:24}"
}

# A port that is free on 127.0.0.1 right now (the kernel picks it).
_dbm_free_port() {
    local py p i
    for py in python3 /usr/bin/python3; do
        command -v "$py" >/dev/null 2>&1 || continue
        p=$(timeout 10 "$py" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()' 2>/dev/null) || continue
        if [[ $p =~ ^[0-9]+$ ]]; then
            printf '%s' "$p"
            return 0
        fi
    done
    # No python: try random high ports until one refuses a connection.
    for ((i = 0; i < 50; i++)); do
        p=$((20000 + RANDOM % 12000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            printf '%s' "$p"
            return 0
        fi
    done
    return 1
}

# Seconds since the epoch with decimals (for timings).
_dbm_now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }
_dbm_elapsed() { awk -v a="$1" -v b="$(_dbm_now)" 'BEGIN { printf "%.1f", b - a }'; }

# Is the process alive (a zombie counts as dead)?
_dbm_alive() {
    local pid=$1 state
    [[ -n $pid ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 0
    [[ $state != Z ]]
}

# _dbm_wait_dead PID SECONDS
_dbm_wait_dead() {
    local pid=$1 deadline=$((SECONDS + $2))
    while _dbm_alive "$pid"; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
    return 0
}

# _dbm_kill_hard PID: TERM, wait, then KILL.
_dbm_kill_hard() {
    local pid=$1
    _dbm_alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    _dbm_wait_dead "$pid" 20 && return 0
    kill -KILL "$pid" 2>/dev/null || true
    _dbm_wait_dead "$pid" 10
}

# SIGCONT a process and its children (a test may have SIGSTOPped them).
_dbm_cont_tree() {
    local pid=$1 child
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    kill -CONT "$pid" 2>/dev/null || true
    for child in $(pgrep -P "$pid" 2>/dev/null); do
        kill -CONT "$child" 2>/dev/null || true
    done
    return 0
}

# Wait (at most 2.5 s) until a dead server has been reaped, so that a `pgrep`
# right after a stop does not show it as <defunct>. The postmaster is orphaned
# by pg_ctl, and on this machine kind pid 1 reaps orphans only about every 2 s.
# Never fails.
_dbm_wait_gone() {
    local pid=$1 i
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    for ((i = 0; i < 50; i++)); do
        [[ -e /proc/$pid ]] || return 0
        sleep 0.05
    done
    return 0
}

_dbm_is_root() { [[ $(id -u) == 0 ]]; }

# Earlier runs that were killed (kill -9, a lost CI machine) leave servers and
# 40-130 MB temp dirs behind. Each dir records the shell that owns it. Once that
# shell is gone: a dir whose server is dead is removed; a server still running
# is left alone for 2 hours (somebody may be using it on purpose), then stopped
# and its dir removed. A dir with no owner file is only touched once it is
# 10 minutes old (another run may be creating it).
_dbm_clean_stale() {
    local base=${DBM_TMPDIR:-/tmp} d owner pid sig
    while IFS= read -r d; do
        [[ -n $d && -d $d ]] || continue
        owner=
        if [[ -f $d/owner ]]; then
            owner=$(cat "$d/owner" 2>/dev/null) || owner=
            if [[ $owner =~ ^[0-9]+$ ]] && kill -0 "$owner" 2>/dev/null; then continue; fi
        elif [[ -z $(find "$d" -maxdepth 0 -mmin +10 2>/dev/null) ]]; then
            continue
        fi
        pid=
        sig=TERM
        if [[ -f $d/pgbouncer.pid ]]; then
            pid=$(cat "$d/pgbouncer.pid" 2>/dev/null) || pid=
        elif [[ -f $d/data/postmaster.pid ]]; then
            pid=$(head -n 1 "$d/data/postmaster.pid" 2>/dev/null) || pid=
            sig=INT # the postmaster's fast shutdown
        elif [[ -f $d/pid ]]; then
            pid=$(cat "$d/pid" 2>/dev/null) || pid=
        fi
        if [[ $pid =~ ^[0-9]+$ ]] && _dbm_alive "$pid"; then
            [[ -n $(find "$d" -maxdepth 0 -mmin +120 2>/dev/null) ]] || continue
            _dbm_log "stopping server $pid left behind in $d"
            _dbm_cont_tree "$pid"
            kill "-$sig" "$pid" 2>/dev/null || true
            if ! _dbm_wait_dead "$pid" 20; then
                kill -KILL "$pid" 2>/dev/null || true
                _dbm_wait_dead "$pid" 10 || true
            fi
        fi
        rm -rf -- "$d"
    done < <(find "$base" -maxdepth 1 -type d \( -name 'dbmanager-pg.??????' -o -name 'dbmanager-my.??????' -o -name 'dbmanager-pgb.??????' -o -name 'dbmanager-pgsb.??????' \) 2>/dev/null)
    return 0
}

# ---------------------------------------------------------------- PostgreSQL

_dbm_pg_bin() {
    local d
    if [[ -n ${DBM_PG_BIN:-} ]]; then
        printf '%s' "$DBM_PG_BIN"
        return 0
    fi
    if [[ -x /usr/lib/postgresql/15/bin/pg_ctl ]]; then
        printf '%s' /usr/lib/postgresql/15/bin
        return 0
    fi
    # Any other version, newest first.
    for d in $(printf '%s\n' /usr/lib/postgresql/*/bin | sort -t/ -k4,4nr); do
        if [[ -x $d/pg_ctl ]]; then
            printf '%s' "$d"
            return 0
        fi
    done
    d=$(command -v pg_ctl 2>/dev/null) || return 1
    printf '%s' "$(dirname -- "$d")"
}

# Run a command as the postgres OS user when root (PostgreSQL refuses root),
# from inside the cluster dir (the caller's cwd may be unreadable to postgres).
_dbm_as_pg() {
    if _dbm_is_root; then
        (cd "$_DBM_PG_DIR" && runuser -u postgres -- "$@")
    else
        (cd "$_DBM_PG_DIR" && "$@")
    fi
}

_dbm_stop_postgres() {
    local dir=${_DBM_PG_DIR:-} pid=${_DBM_PG_PID:-} bin
    if [[ -z $pid && -n $dir && -f $dir/data/postmaster.pid ]]; then
        pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || pid=
    fi
    # A fault-injection test may have SIGSTOPped the server or a backend.
    _dbm_cont_tree "$pid"
    if [[ -n $dir && -d $dir/data ]]; then
        bin=$(_dbm_pg_bin) || bin=
        if [[ -n $bin && -f $dir/data/postmaster.pid ]]; then
            _dbm_as_pg timeout 40 "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop \
                >/dev/null 2>&1 || true
        fi
    fi
    if [[ -n $pid ]] && _dbm_alive "$pid"; then
        # pg_ctl did not do it: immediate shutdown, then the hard way.
        kill -QUIT "$pid" 2>/dev/null || true
        _dbm_wait_dead "$pid" 10 || _dbm_kill_hard "$pid" || true
    fi
    _dbm_wait_gone "$pid"
    if [[ -n $dir && -d $dir && ${DBM_KEEP_DIRS:-0} != 1 ]]; then
        rm -rf -- "$dir"
    elif [[ -n $dir && -d $dir ]]; then
        _dbm_log "kept $dir"
    fi
    unset _DBM_PG_DIR _DBM_PG_PID _DBM_PG_PORT
    unset DBMANAGER_TEST_POSTGRES_URL DBMANAGER_TEST_POSTGRES_ADMIN_URL \
        DBMANAGER_TEST_POSTGRES_PGDATA DBMANAGER_TEST_POSTGRES_PID
}

# _dbm_psql URL SQL... : run statements, bounded, stop at the first error.
_dbm_psql() {
    local url=$1 bin sql args=()
    shift
    bin=$(_dbm_pg_bin) || return 1
    for sql in "$@"; do args+=(-c "$sql"); done
    PGCONNECT_TIMEOUT=10 timeout 60 "$bin/psql" -X -q -A -t -v ON_ERROR_STOP=1 \
        -d "$url" "${args[@]}"
}

dbm_start_postgres() {
    local t0 bin dir port superpw apppw tries pid admin_url app_url out
    t0=$(_dbm_now)
    if [[ -n ${_DBM_PG_DIR:-} ]] && _dbm_alive "${_DBM_PG_PID:-}"; then
        _dbm_log "PostgreSQL already running on port ${_DBM_PG_PORT:-?} (reusing it)"
        return 0
    fi
    _dbm_stop_postgres # leftovers of a failed start in this shell
    _dbm_clean_stale

    bin=$(_dbm_pg_bin)
    if [[ -z $bin || ! -x $bin/initdb || ! -x $bin/pg_ctl ]]; then
        if [[ -z ${DBM_PG_BIN:-} ]] && _dbm_is_root && command -v apt-get >/dev/null 2>&1; then
            _dbm_log "PostgreSQL binaries not found; installing postgresql with apt-get"
            _dbm_apt_install postgresql || {
                _dbm_fail "apt-get install postgresql failed"
                return 1
            }
            bin=$(_dbm_pg_bin)
        fi
        if [[ -z $bin || ! -x $bin/initdb || ! -x $bin/pg_ctl ]]; then
            _dbm_fail "PostgreSQL binaries not found (looked in /usr/lib/postgresql/*/bin and PATH; set DBM_PG_BIN)"
            return 1
        fi
    fi
    if _dbm_is_root && ! id postgres >/dev/null 2>&1; then
        _dbm_fail "running as root but there is no 'postgres' OS user to run PostgreSQL as"
        return 1
    fi

    dir=$(mktemp -d "${DBM_TMPDIR:-/tmp}/dbmanager-pg.XXXXXX") || {
        _dbm_fail "mktemp -d failed"
        return 1
    }
    _DBM_PG_DIR=$dir
    printf '%s\n' "$$" >"$dir/owner" || true
    chmod 0700 "$dir" || true
    if _dbm_is_root; then
        chown postgres:postgres "$dir" || {
            _dbm_fail "chown postgres $dir failed"
            _dbm_stop_postgres
            return 1
        }
    fi
    if ! { superpw=$(_dbm_password) && apppw=$(_dbm_password); }; then
        _dbm_fail "could not generate passwords from /dev/urandom"
        _dbm_stop_postgres
        return 1
    fi
    (umask 077 && printf '%s\n' "$superpw" >"$dir/pw") || {
        _dbm_fail "could not write $dir/pw"
        _dbm_stop_postgres
        return 1
    }
    if _dbm_is_root; then chown postgres:postgres "$dir/pw" || true; fi

    if ! _dbm_as_pg timeout 120 "$bin/initdb" -D "$dir/data" -U postgres -A scram-sha-256 \
        --pwfile="$dir/pw" -E UTF8 --no-locale -N >"$dir/initdb.log" 2>&1; then
        _dbm_fail "initdb failed in $dir/data" "$dir/initdb.log"
        _dbm_stop_postgres
        return 1
    fi
    rm -f -- "$dir/pw"

    # Start on a free port; retry with another one if somebody took it meanwhile.
    for tries in 1 2 3; do
        port=$(_dbm_free_port) || {
            _dbm_fail "could not find a free port on 127.0.0.1"
            _dbm_stop_postgres
            return 1
        }
        if [[ -e $dir/log ]]; then : >"$dir/log"; fi
        if _dbm_as_pg timeout $((${DBM_START_TIMEOUT:-60} + 10)) "$bin/pg_ctl" -D "$dir/data" \
            -l "$dir/log" -w -t "${DBM_START_TIMEOUT:-60}" \
            -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=${DBM_PG_MAX_CONNECTIONS:-300}" \
            start >"$dir/pg_ctl.log" 2>&1; then
            break
        fi
        if ((tries < 3)) && grep -qE 'could not bind|Address already in use' "$dir/log" 2>/dev/null; then
            _dbm_log "PostgreSQL: port $port was taken, trying another one"
            _dbm_as_pg timeout 40 "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
            continue
        fi
        _dbm_fail "PostgreSQL could not start on 127.0.0.1:$port (pg_ctl start failed or timed out after ${DBM_START_TIMEOUT:-60}s; server log below)" "$dir/pg_ctl.log" "$dir/log"
        _dbm_stop_postgres
        return 1
    done
    _DBM_PG_PORT=$port
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || pid=
    if ! [[ $pid =~ ^[0-9]+$ ]] || ! _dbm_alive "$pid"; then
        _dbm_fail "PostgreSQL started but its postmaster.pid has no live pid" "$dir/log"
        _dbm_stop_postgres
        return 1
    fi
    _DBM_PG_PID=$pid

    admin_url="postgresql://postgres:$superpw@127.0.0.1:$port/postgres"
    if ! out=$(_dbm_psql "$admin_url" \
        "CREATE ROLE app LOGIN CREATEDB PASSWORD '$apppw'" \
        "CREATE DATABASE appdb OWNER app" 2>&1); then
        printf '%s\n' "$out" >"$dir/setup.log"
        _dbm_fail "PostgreSQL setup (role app, database appdb) failed" "$dir/setup.log" "$dir/log"
        _dbm_stop_postgres
        return 1
    fi
    admin_url="postgresql://postgres:$superpw@127.0.0.1:$port/appdb"
    app_url="postgresql://app:$apppw@127.0.0.1:$port/appdb"
    # Check both URLs; app must be able to create tables in appdb's public schema.
    if ! out=$(_dbm_psql "$app_url" \
        "CREATE TABLE dbm_provision_probe (id int PRIMARY KEY)" \
        "DROP TABLE dbm_provision_probe" 2>&1) ||
        ! out=$(_dbm_psql "$admin_url" "SELECT count(*) FROM pg_stat_activity" 2>&1); then
        printf '%s\n' "$out" >"$dir/setup.log"
        _dbm_fail "PostgreSQL check failed (app cannot create a table in appdb, or admin cannot log in)" "$dir/setup.log" "$dir/log"
        _dbm_stop_postgres
        return 1
    fi

    export DBMANAGER_TEST_POSTGRES_URL=$app_url
    export DBMANAGER_TEST_POSTGRES_ADMIN_URL=$admin_url
    export DBMANAGER_TEST_POSTGRES_PGDATA=$dir/data
    export DBMANAGER_TEST_POSTGRES_PID=$pid
    _dbm_log "PostgreSQL $("$bin/postgres" --version 2>/dev/null | awk '{ print $3 }') ready on 127.0.0.1:$port (pid $pid, $(_dbm_elapsed "$t0") s)"
}

# _dbm_pg_standby PRIMARY_PORT SUPERPW: a hot standby of the PostgreSQL on
# 127.0.0.1:PRIMARY_PORT, made with pg_basebackup -R -X stream (a fast
# checkpoint: the default spread one takes minutes on an idle server) as the
# superuser (initdb's pg_hba.conf allows replication from 127.0.0.1), in a
# fresh temp dir on a free port; waits until it accepts connections. Sets
# _DBM_SB_DIR, _DBM_SB_PORT, _DBM_SB_PID. Returns non-zero (and removes what
# it made) on failure.
_dbm_pg_standby() {
    local pport=$1 superpw=$2 bin dir port pid tries
    bin=$(_dbm_pg_bin) || {
        _dbm_fail "PostgreSQL binaries not found"
        return 1
    }
    dir=$(mktemp -d "${DBM_TMPDIR:-/tmp}/dbmanager-pgsb.XXXXXX") || {
        _dbm_fail "mktemp -d failed"
        return 1
    }
    printf '%s\n' "$$" >"$dir/owner" || true
    chmod 0700 "$dir" || true
    if _dbm_is_root; then chown postgres:postgres "$dir" || true; fi
    if ! PGPASSWORD=$superpw PGCONNECT_TIMEOUT=10 _DBM_PG_DIR=$dir _dbm_as_pg env PGPASSWORD="$superpw" \
        timeout 120 "$bin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -D "$dir/data" -R -X stream --checkpoint=fast \
        >"$dir/basebackup.log" 2>&1; then
        _dbm_fail "pg_basebackup of 127.0.0.1:$pport failed" "$dir/basebackup.log"
        rm -rf -- "$dir"
        return 1
    fi
    for tries in 1 2 3; do
        port=$(_dbm_free_port) || {
            _dbm_fail "could not find a free port on 127.0.0.1"
            rm -rf -- "$dir"
            return 1
        }
        # In the config (not on pg_ctl's command line), so that a plain
        # `pg_ctl start` or a promotion keeps the port and socket.
        printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = %s\nhot_standby = on\n" \
            "$port" "$dir" "${DBM_PG_MAX_CONNECTIONS:-300}" >>"$dir/data/postgresql.auto.conf"
        if _DBM_PG_DIR=$dir _dbm_as_pg timeout $((${DBM_START_TIMEOUT:-60} + 10)) "$bin/pg_ctl" -D "$dir/data" \
            -l "$dir/log" -w -t "${DBM_START_TIMEOUT:-60}" start >"$dir/pg_ctl.log" 2>&1; then
            break
        fi
        if ((tries < 3)) && grep -qE 'could not bind|Address already in use' "$dir/log" 2>/dev/null; then
            _DBM_PG_DIR=$dir _dbm_as_pg timeout 40 "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
            continue
        fi
        _dbm_fail "the PostgreSQL standby could not start on 127.0.0.1:$port" "$dir/pg_ctl.log" "$dir/log"
        _DBM_PG_DIR=$dir _dbm_as_pg timeout 40 "$bin/pg_ctl" -D "$dir/data" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
        rm -rf -- "$dir"
        return 1
    done
    pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || pid=
    printf 'postgres\n' >"$dir/kind"
    _DBM_SB_DIR=$dir
    _DBM_SB_PORT=$port
    _DBM_SB_PID=$pid
}

_dbm_stop_pg_replica() {
    local dir=${_DBM_PGR_DIR:-}
    if [[ -n $dir && -d $dir ]]; then
        dbm_private_ctl "$dir" remove || true
    fi
    unset _DBM_PGR_DIR DBMANAGER_TEST_POSTGRES_REPLICA_URL DBMANAGER_TEST_POSTGRES_REPLICA_ADMIN_URL \
        DBMANAGER_TEST_POSTGRES_REPLICA_PID
}

# A streaming replica of the PostgreSQL of dbm_start_postgres, for the read
# replica tests (reads there, writes on the primary, replay paused on demand).
dbm_start_pg_replica() {
    local t0 superpw apppw rest
    t0=$(_dbm_now)
    if [[ -n ${_DBM_PGR_DIR:-} ]]; then
        _dbm_log "the PostgreSQL replica is already running (reusing it)"
        return 0
    fi
    if [[ -z ${DBMANAGER_TEST_POSTGRES_ADMIN_URL:-} || -z ${_DBM_PG_PORT:-} ]]; then
        _dbm_fail "dbm_start_pg_replica: start the primary first (dbm_start_postgres)"
        return 1
    fi
    # postgresql://postgres:PW@host:port/db
    rest=${DBMANAGER_TEST_POSTGRES_ADMIN_URL#postgresql://postgres:}
    superpw=${rest%%@*}
    rest=${DBMANAGER_TEST_POSTGRES_URL#postgresql://app:}
    apppw=${rest%%@*}
    _dbm_pg_standby "$_DBM_PG_PORT" "$superpw" || return 1
    _DBM_PGR_DIR=$_DBM_SB_DIR
    export DBMANAGER_TEST_POSTGRES_REPLICA_URL="postgresql://app:$apppw@127.0.0.1:$_DBM_SB_PORT/appdb"
    export DBMANAGER_TEST_POSTGRES_REPLICA_ADMIN_URL="postgresql://postgres:$superpw@127.0.0.1:$_DBM_SB_PORT/appdb"
    export DBMANAGER_TEST_POSTGRES_REPLICA_PID=$_DBM_SB_PID
    _dbm_log "PostgreSQL streaming replica ready on 127.0.0.1:$_DBM_SB_PORT (pid $_DBM_SB_PID, $(_dbm_elapsed "$t0") s)"
}

# ---------------------------------------------------------------- MariaDB

# _dbm_apt_install PKG...: bounded, non-interactive, and without starting services.
_dbm_apt_install() {
    local policy=/usr/sbin/policy-rc.d added=0 rc=0
    _dbm_is_root || {
        _dbm_fail "need root to apt-get install $*"
        return 1
    }
    if [[ ! -e $policy ]]; then
        # Keep the package's own service from starting on port 3306.
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && added=1
    fi
    _dbm_log "apt-get update"
    if ! timeout 600 apt-get -o DPkg::Lock::Timeout=300 -q update >/tmp/dbmanager-apt.log 2>&1; then
        _dbm_log "apt-get update failed (see /tmp/dbmanager-apt.log); trying the install anyway"
    fi
    _dbm_log "apt-get install -y $* (this takes about a minute)"
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get -o DPkg::Lock::Timeout=300 -q install -y "$@" \
        >>/tmp/dbmanager-apt.log 2>&1 || rc=$?
    if ((added)); then rm -f -- "$policy"; fi
    if ((rc != 0)); then
        _dbm_fail "apt-get failed (exit $rc) installing $*" /tmp/dbmanager-apt.log
        return 1
    fi
}

_dbm_mariadbd() {
    local p
    for p in "$(command -v mariadbd 2>/dev/null)" /usr/sbin/mariadbd "$(command -v mysqld 2>/dev/null)" /usr/sbin/mysqld; do
        if [[ -n $p && -x $p ]]; then
            printf '%s' "$p"
            return 0
        fi
    done
    return 1
}

_dbm_mariadb_tool() { # first of the given names that exists
    local n
    for n in "$@"; do
        if command -v "$n" >/dev/null 2>&1; then
            command -v "$n"
            return 0
        fi
        if [[ -x /usr/bin/$n ]]; then
            printf '%s' "/usr/bin/$n"
            return 0
        fi
    done
    return 1
}

# _dbm_my_sql DEFAULTS_FILE SQL: run SQL through the unix socket, bounded.
_dbm_my_sql() {
    local client
    client=$(_dbm_mariadb_tool mariadb mysql) || return 1
    timeout 60 "$client" --defaults-file="$1" --connect-timeout=10 -N -B -e "$2"
}

_dbm_stop_mariadb() {
    local dir=${_DBM_MY_DIR:-} pid=${_DBM_MY_PID:-}
    if [[ -z $pid && -n $dir && -s $dir/pid ]]; then
        pid=$(cat "$dir/pid" 2>/dev/null) || pid=
    fi
    if [[ -n $pid ]] && _dbm_alive "$pid"; then
        # SIGTERM is mariadbd's clean shutdown (quicker than mariadb-admin
        # shutdown, which polls once a second); CONT first in case a
        # fault-injection test left it stopped.
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        if ! _dbm_wait_dead "$pid" 30; then
            kill -KILL "$pid" 2>/dev/null || true
            _dbm_wait_dead "$pid" 10 || _dbm_log "mariadbd $pid would not die"
        fi
    fi
    # The process started (if it is not the one in the pid file and still alive).
    if [[ -n ${_DBM_MY_LAUNCH_PID:-} ]] && _dbm_alive "$_DBM_MY_LAUNCH_PID"; then
        kill -CONT "$_DBM_MY_LAUNCH_PID" 2>/dev/null || true
        _dbm_kill_hard "$_DBM_MY_LAUNCH_PID" || true
    fi
    _dbm_wait_gone "$pid"
    if [[ -n $dir && -d $dir && ${DBM_KEEP_DIRS:-0} != 1 ]]; then
        rm -rf -- "$dir"
    elif [[ -n $dir && -d $dir ]]; then
        _dbm_log "kept $dir"
    fi
    unset _DBM_MY_DIR _DBM_MY_PID _DBM_MY_PORT _DBM_MY_LAUNCH_PID
    unset DBMANAGER_TEST_MYSQL_URL DBMANAGER_TEST_MYSQL_ADMIN_URL DBMANAGER_TEST_MYSQL_PID
}

dbm_start_mariadb() {
    local t0 mariadbd installdb admin client dir port rootpw apppw tries pid lpid deadline \
        h sql out started user_opt=()
    t0=$(_dbm_now)
    if [[ -n ${_DBM_MY_DIR:-} ]] && _dbm_alive "${_DBM_MY_PID:-}"; then
        _dbm_log "MariaDB already running on port ${_DBM_MY_PORT:-?} (reusing it)"
        return 0
    fi
    _dbm_stop_mariadb # leftovers of a failed start in this shell
    _dbm_clean_stale

    if ! mariadbd=$(_dbm_mariadbd); then
        _dbm_log "mariadbd not found; installing mariadb-server"
        _dbm_apt_install mariadb-server || return 1
        mariadbd=$(_dbm_mariadbd) || {
            _dbm_fail "mariadb-server installed but no mariadbd found"
            return 1
        }
        _dbm_log "mariadb-server installed ($(_dbm_elapsed "$t0") s)"
    fi
    if ! { installdb=$(_dbm_mariadb_tool mariadb-install-db mysql_install_db) &&
        admin=$(_dbm_mariadb_tool mariadb-admin mysqladmin) &&
        client=$(_dbm_mariadb_tool mariadb mysql); }; then
        _dbm_fail "mariadb-install-db / mariadb-admin / mariadb not found (is mariadb-server fully installed?)"
        return 1
    fi

    dir=$(mktemp -d "${DBM_TMPDIR:-/tmp}/dbmanager-my.XXXXXX") || {
        _dbm_fail "mktemp -d failed"
        return 1
    }
    _DBM_MY_DIR=$dir
    printf '%s\n' "$$" >"$dir/owner" || true
    chmod 0711 "$dir" || true
    if _dbm_is_root; then
        if ! id mysql >/dev/null 2>&1; then
            _dbm_fail "running as root but there is no 'mysql' OS user"
            _dbm_stop_mariadb
            return 1
        fi
        if ! chown mysql:mysql "$dir"; then
            _dbm_fail "chown mysql $dir failed"
            _dbm_stop_mariadb
            return 1
        fi
        user_opt=(--user=mysql)
    fi
    if ! { rootpw=$(_dbm_password) && apppw=$(_dbm_password); }; then
        _dbm_fail "could not generate passwords from /dev/urandom"
        _dbm_stop_mariadb
        return 1
    fi

    if ! timeout 180 "$installdb" --no-defaults "${user_opt[@]}" --datadir="$dir/data" \
        --auth-root-authentication-method=normal --skip-test-db >"$dir/install.log" 2>&1; then
        _dbm_fail "mariadb-install-db failed in $dir/data" "$dir/install.log"
        _dbm_stop_mariadb
        return 1
    fi

    # Root without a password through the socket until the setup below.
    printf '[client]\nuser=root\nsocket=%s\n' "$dir/sock" >"$dir/client.cnf"
    chmod 0600 "$dir/client.cnf"

    started=0
    for tries in 1 2 3; do
        port=$(_dbm_free_port) || {
            _dbm_fail "could not find a free port on 127.0.0.1"
            _dbm_stop_mariadb
            return 1
        }
        : >"$dir/mariadbd.err"
        if _dbm_is_root; then chown mysql:mysql "$dir/mariadbd.err" || true; fi
        "$mariadbd" --no-defaults "${user_opt[@]}" --datadir="$dir/data" --socket="$dir/sock" \
            --port="$port" --bind-address=127.0.0.1 --pid-file="$dir/pid" --log-error="$dir/mariadbd.err" \
            --skip-name-resolve --max-connections="${DBM_MY_MAX_CONNECTIONS:-500}" \
            --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
            --innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 \
            --innodb-doublewrite=0 --skip-log-bin \
            </dev/null >"$dir/stdout.log" 2>&1 &
        lpid=$!
        disown "$lpid" 2>/dev/null || true
        _DBM_MY_LAUNCH_PID=$lpid
        deadline=$((SECONDS + ${DBM_START_TIMEOUT:-60}))
        while ((SECONDS < deadline)); do
            if ! _dbm_alive "$lpid"; then break; fi
            if timeout 10 "$admin" --defaults-file="$dir/client.cnf" --connect-timeout=2 ping \
                >/dev/null 2>&1; then
                started=1
                break
            fi
            sleep 0.1
        done
        ((started)) && break
        if _dbm_alive "$lpid"; then
            _dbm_kill_hard "$lpid" || true
            _dbm_fail "MariaDB did not answer on $dir/sock within ${DBM_START_TIMEOUT:-60}s" "$dir/mariadbd.err" "$dir/stdout.log"
            _dbm_stop_mariadb
            return 1
        fi
        if ((tries < 3)) && grep -qE "Can't start server: Bind on TCP/IP port|Address already in use" "$dir/mariadbd.err" 2>/dev/null; then
            _dbm_log "MariaDB: port $port was taken, trying another one"
            continue
        fi
        _dbm_fail "MariaDB exited during startup (port $port)" "$dir/mariadbd.err" "$dir/stdout.log"
        _dbm_stop_mariadb
        return 1
    done
    if ! ((started)); then
        _dbm_fail "MariaDB could not start" "$dir/mariadbd.err"
        _dbm_stop_mariadb
        return 1
    fi
    _DBM_MY_PORT=$port
    pid=$(cat "$dir/pid" 2>/dev/null) || pid=
    [[ $pid =~ ^[0-9]+$ ]] || pid=$lpid
    _DBM_MY_PID=$pid

    # Users. install-db creates root@localhost and, depending on the version,
    # anonymous users and root@<hostname> (which --skip-name-resolve cannot even
    # ALTER): keep only root@localhost, give it the password, and add
    # root@127.0.0.1 for TCP logins.
    sql="DELETE FROM mysql.global_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost'); "
    sql+="DELETE FROM mysql.proxies_priv WHERE User = '' OR (User = 'root' AND Host <> 'localhost'); "
    sql+="DELETE FROM mysql.db WHERE User = ''; "
    sql+="FLUSH PRIVILEGES; "
    sql+="ALTER USER 'root'@'localhost' IDENTIFIED BY '$rootpw'; "
    sql+="CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '$rootpw'; "
    sql+="GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION; "
    sql+="CREATE DATABASE appdb; "
    for h in '%' 'localhost' '127.0.0.1'; do
        sql+="CREATE USER 'app'@'$h' IDENTIFIED BY '$apppw'; "
        sql+="GRANT ALL PRIVILEGES ON appdb.* TO 'app'@'$h'; "
        sql+="GRANT ALL PRIVILEGES ON \`dbm\\_%\`.* TO 'app'@'$h'; "
    done
    if ! _dbm_my_sql "$dir/client.cnf" "$sql" >"$dir/setup.log" 2>&1; then
        _dbm_fail "MariaDB setup (root password, user app, database appdb) failed" "$dir/setup.log" "$dir/mariadbd.err"
        _dbm_stop_mariadb
        return 1
    fi
    printf '[client]\nuser=root\npassword=%s\nsocket=%s\n' "$rootpw" "$dir/sock" >"$dir/client.cnf"
    chmod 0600 "$dir/client.cnf"
    printf '[client]\nuser=app\npassword=%s\nhost=127.0.0.1\nport=%s\nprotocol=TCP\n' "$apppw" "$port" >"$dir/app.cnf"
    printf '[client]\nuser=root\npassword=%s\nhost=127.0.0.1\nport=%s\nprotocol=TCP\n' "$rootpw" "$port" >"$dir/root-tcp.cnf"
    chmod 0600 "$dir/app.cnf" "$dir/root-tcp.cnf"

    # Check both URLs over TCP; app must be able to create tables in appdb
    # and create/drop a dbm_ database.
    if ! out=$(_dbm_my_sql "$dir/app.cnf" "USE appdb; CREATE TABLE dbm_provision_probe (id INT PRIMARY KEY); DROP TABLE dbm_provision_probe; CREATE DATABASE dbm_provision_probe; DROP DATABASE dbm_provision_probe;" 2>&1) ||
        ! out=$(_dbm_my_sql "$dir/root-tcp.cnf" "USE appdb; SELECT COUNT(*) FROM information_schema.PROCESSLIST;" 2>&1); then
        printf '%s\n' "$out" >"$dir/setup.log"
        _dbm_fail "MariaDB check failed (app cannot create a table in appdb, or root cannot log in over TCP)" "$dir/setup.log" "$dir/mariadbd.err"
        _dbm_stop_mariadb
        return 1
    fi

    export DBMANAGER_TEST_MYSQL_URL="mysql://app:$apppw@127.0.0.1:$port/appdb"
    export DBMANAGER_TEST_MYSQL_ADMIN_URL="mysql://root:$rootpw@127.0.0.1:$port/appdb"
    export DBMANAGER_TEST_MYSQL_PID=$pid
    _dbm_log "MariaDB $("$mariadbd" --version 2>/dev/null | awk '{ print $3 }') ready on 127.0.0.1:$port (pid $pid, $(_dbm_elapsed "$t0") s)"
}

# ---------------------------------------------------------------- Pushgateway

# dbm_start_pushgateway: a Prometheus Pushgateway (Debian's package, installed
# when missing) on a free loopback port, in memory only. Exports
# DBMANAGER_TEST_PUSHGATEWAY_URL (http://127.0.0.1:<port>).
dbm_start_pushgateway() {
    local bin=/usr/bin/prometheus-pushgateway port log i
    if [[ ! -x $bin ]]; then
        _dbm_apt_install prometheus-pushgateway || return 1
    fi
    port=$(_dbm_free_port) || {
        _dbm_fail "no free port for the Pushgateway"
        return 1
    }
    log=$(mktemp "${DBM_TMPDIR:-/tmp}/dbmanager-pushgateway.XXXXXX") || return 1
    _DBM_PGW_LOG=$log
    "$bin" --web.listen-address="127.0.0.1:$port" >"$log" 2>&1 &
    _DBM_PGW_PID=$!
    for ((i = 0; i < ${DBM_START_TIMEOUT:-60} * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export DBMANAGER_TEST_PUSHGATEWAY_URL="http://127.0.0.1:$port"
            _dbm_log "Pushgateway on port $port"
            return 0
        fi
        if ! _dbm_alive "$_DBM_PGW_PID"; then break; fi
        sleep 0.1
    done
    _dbm_fail "the Pushgateway did not start" "$log"
    _dbm_stop_pushgateway
    return 1
}

_dbm_stop_pushgateway() {
    if [[ -n ${_DBM_PGW_PID:-} ]] && _dbm_alive "$_DBM_PGW_PID"; then
        _dbm_kill_hard "$_DBM_PGW_PID" || true
    fi
    if [[ -n ${_DBM_PGW_LOG:-} ]]; then rm -f -- "$_DBM_PGW_LOG"; fi
    _DBM_PGW_PID= _DBM_PGW_LOG=
}

# ---------------------------------------------------------------- promtool

# dbm_need_promtool: Prometheus' `promtool` (Debian's package `prometheus`,
# installed when missing; its service is not started), which the tests use to
# check the exposition text. Exports DBMANAGER_TEST_PROMTOOL (its path).
dbm_need_promtool() {
    local bin
    bin=$(command -v promtool 2>/dev/null) || bin=
    if [[ -z $bin ]]; then
        _dbm_apt_install prometheus || return 1
        bin=$(command -v promtool 2>/dev/null) || bin=
    fi
    if [[ -z $bin || ! -x $bin ]]; then
        _dbm_fail "promtool not found after installing the prometheus package"
        return 1
    fi
    export DBMANAGER_TEST_PROMTOOL=$bin
    _dbm_log "promtool: $bin"
}

# dbm_need_sqlite3: the `sqlite3` shell (Debian's package `sqlite3`, installed
# when missing), whose `.dump` the migration tests run as a migration.
dbm_need_sqlite3() {
    if ! command -v sqlite3 >/dev/null 2>&1; then
        _dbm_apt_install sqlite3 || return 1
    fi
    _dbm_log "sqlite3: $(command -v sqlite3)"
}

# dbm_need_pyway: Pyway (PyPI `pyway`, the migration tool the seeds used), in
# a venv of its own under the cache folder, with the PostgreSQL driver and the
# MySQL one it can load on Debian 12 (newer mysql-connector-python wheels need
# a newer OpenSSL). No server is started. Exports DBMANAGER_TEST_PYWAY (the
# path of the `pyway` command); the history tests run it against the servers.
dbm_need_pyway() {
    local venv
    venv=$(_dbm_python_venv pyway "${DBM_PYWAY_VERSION:-0.3.33}" pyway \
        "Pyway, a migration-history peer of the tests," \
        "pyway==${DBM_PYWAY_VERSION:-0.3.33}" psycopg2-binary "mysql-connector-python==9.1.0") || return 1
    export DBMANAGER_TEST_PYWAY=$venv/bin/pyway
    _dbm_log "pyway: $DBMANAGER_TEST_PYWAY"
}

# ---------------------------------------------------------------- SQL Server (pysqlbridge)

_dbm_stop_mssql() {
    local dir=${_DBM_MS_DIR:-} pid=${_DBM_MS_PID:-}
    if [[ -n $pid ]] && _dbm_alive "$pid"; then
        # A fault-injection test may have SIGSTOPped it.
        kill -CONT "$pid" 2>/dev/null || true
        _dbm_kill_hard "$pid" || _dbm_log "pysqlbridge $pid would not die"
    fi
    _dbm_wait_gone "$pid"
    if [[ -n $dir && -d $dir && ${DBM_KEEP_DIRS:-0} != 1 ]]; then
        rm -rf -- "$dir"
    elif [[ -n $dir && -d $dir ]]; then
        _dbm_log "kept $dir"
    fi
    unset _DBM_MS_DIR _DBM_MS_PID _DBM_MS_PORT
    unset DBMANAGER_TEST_MSSQL_URL DBMANAGER_TEST_MSSQL_PID
}

# _dbm_python_venv NAME VERSION BIN WHAT PACKAGE...: prints the directory of
# a venv of its own under the cache folder (NAME-VERSION) holding PACKAGE...,
# creating it (and installing python3-venv with apt when `python3 -m venv` is
# missing) unless it is complete (BIN in its bin/). WHAT, in errors, says who
# needs it.
_dbm_python_venv() {
    local name=$1 version=$2 bin=$3 what=$4 cache venv py
    shift 4
    cache=${DBM_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dbmanager}
    venv=$cache/$name-$version
    if [[ -x $venv/bin/$bin && -f $venv/.dbm-complete ]]; then
        printf '%s' "$venv"
        return 0
    fi
    py=$(command -v python3 2>/dev/null) || {
        _dbm_fail "python3 not found ($what needs Python 3.10 or newer)"
        return 1
    }
    if ! timeout 30 "$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)'; then
        _dbm_fail "python3 is older than 3.10; $what needs 3.10 or newer"
        return 1
    fi
    if ! timeout 30 "$py" -c 'import venv, ensurepip' >/dev/null 2>&1; then
        _dbm_log "python3 has no venv/ensurepip; installing python3-venv"
        _dbm_apt_install python3-venv || return 1
    fi
    mkdir -p -- "$cache" || {
        _dbm_fail "cannot create $cache (set DBM_CACHE_DIR)"
        return 1
    }
    rm -rf -- "$venv"
    _dbm_log "installing $name $version into $venv (about 20 s)"
    if ! timeout 120 "$py" -m venv "$venv" >"$cache/$name-install.log" 2>&1 ||
        ! timeout 600 "$venv/bin/pip" install -q --disable-pip-version-check "$@" \
            >>"$cache/$name-install.log" 2>&1; then
        _dbm_fail "could not install $name $version into $venv" "$cache/$name-install.log"
        rm -rf -- "$venv"
        return 1
    fi
    : >"$venv/.dbm-complete"
    printf '%s' "$venv"
}

dbm_start_mssql() {
    local t0 root venv dir port apppw hash tries lpid deadline started f
    t0=$(_dbm_now)
    if [[ -n ${_DBM_MS_DIR:-} ]] && _dbm_alive "${_DBM_MS_PID:-}"; then
        _dbm_log "pysqlbridge already running on port ${_DBM_MS_PORT:-?} (reusing it)"
        return 0
    fi
    _dbm_stop_mssql

    root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
    if [[ ! -f $root/tests/data/mssql/people.csv ]]; then
        _dbm_fail "tests/data/mssql/people.csv not found under $root"
        return 1
    fi
    venv=$(_dbm_python_venv pysqlbridge "${DBM_PYSQLBRIDGE_VERSION:-2.1.3}" pysqlbridge \
        "pysqlbridge, the SQL Server test peer," "pysqlbridge==${DBM_PYSQLBRIDGE_VERSION:-2.1.3}") || return 1

    dir=$(mktemp -d "${TMPDIR:-/tmp}/dbmanager-ms.XXXXXX") || {
        _dbm_fail "mktemp -d failed"
        return 1
    }
    _DBM_MS_DIR=$dir
    chmod 0700 "$dir" || true
    apppw=$(_dbm_password) || {
        _dbm_fail "could not generate a password from /dev/urandom"
        _dbm_stop_mssql
        return 1
    }
    # --hash-password reads the password twice from the terminal; without
    # one (setsid) getpass falls back to stdin, so it never shows on a
    # command line.
    hash=$(printf '%s\n%s\n' "$apppw" "$apppw" |
        timeout 60 setsid "$venv/bin/pysqlbridge" --hash-password 2>"$dir/hash.log" |
        grep -E '^pbkdf2_sha256\$' | tail -n 1) || hash=
    if [[ -z $hash ]]; then
        _dbm_fail "pysqlbridge --hash-password printed no hash" "$dir/hash.log"
        _dbm_stop_mssql
        return 1
    fi
    for f in "$root"/tests/data/mssql/*.csv; do
        cp -- "$f" "$dir/" || {
            _dbm_fail "cannot copy $f to $dir"
            _dbm_stop_mssql
            return 1
        }
    done
    {
        printf '{\n  "logins": [ { "user": "app", "password_hash": "%s" } ],\n  "tables": [\n' "$hash"
        local first=1 name
        for f in "$dir"/*.csv; do
            name=$(basename -- "$f" .csv)
            ((first)) || printf ',\n'
            printf '    { "name": "%s", "csv": "%s.csv" }' "$name" "$name"
            first=0
        done
        printf '\n  ]\n}\n'
    } >"$dir/bridge.json"

    started=0
    for tries in 1 2 3; do
        port=$(_dbm_free_port) || {
            _dbm_fail "could not find a free port on 127.0.0.1"
            _dbm_stop_mssql
            return 1
        }
        : >"$dir/bridge.log"
        (cd "$dir" && exec "$venv/bin/pysqlbridge" --config "$dir/bridge.json" \
            --host 127.0.0.1 --port "$port" --log "$dir/bridge.log") \
            </dev/null >"$dir/stdout.log" 2>&1 &
        lpid=$!
        disown "$lpid" 2>/dev/null || true
        _DBM_MS_PID=$lpid
        deadline=$((SECONDS + ${DBM_START_TIMEOUT:-60}))
        while ((SECONDS < deadline)); do
            _dbm_alive "$lpid" || break
            if grep -q 'listening on' "$dir/bridge.log" "$dir/stdout.log" 2>/dev/null &&
                (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
                started=1
                break
            fi
            sleep 0.1
        done
        ((started)) && break
        if _dbm_alive "$lpid"; then
            _dbm_kill_hard "$lpid" || true
            _dbm_fail "pysqlbridge did not listen on 127.0.0.1:$port within ${DBM_START_TIMEOUT:-60}s" "$dir/stdout.log" "$dir/bridge.log"
            _dbm_stop_mssql
            return 1
        fi
        if ((tries < 3)) && grep -q 'cannot listen' "$dir/stdout.log" "$dir/bridge.log" 2>/dev/null; then
            _dbm_log "pysqlbridge: port $port was taken, trying another one"
            continue
        fi
        _dbm_fail "pysqlbridge exited during startup (port $port)" "$dir/stdout.log" "$dir/bridge.log"
        _dbm_stop_mssql
        return 1
    done
    if ! ((started)); then
        _dbm_fail "pysqlbridge could not start" "$dir/stdout.log"
        _dbm_stop_mssql
        return 1
    fi
    _DBM_MS_PORT=$port

    # The peer serves a self-signed certificate: the tests ask for TLS and
    # trust it explicitly.
    export DBMANAGER_TEST_MSSQL_URL="mssql://app:$apppw@127.0.0.1:$port/bridge?encrypt=true&trust_server_certificate=true"
    export DBMANAGER_TEST_MSSQL_PID=$lpid
    _dbm_log "pysqlbridge $("$venv/bin/pip" show pysqlbridge 2>/dev/null | awk '/^Version:/ { print $2 }') ready on 127.0.0.1:$port (pid $lpid, $(_dbm_elapsed "$t0") s)"
}

# ---------------------------------------------------------------- pgbouncer

_dbm_stop_pgbouncer() {
    local dir=${_DBM_PGB_DIR:-} pid=${_DBM_PGB_PID:-}
    if [[ -z $pid && -n $dir && -s $dir/pgbouncer.pid ]]; then
        pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null) || pid=
    fi
    if [[ -n $pid ]]; then
        kill -CONT "$pid" 2>/dev/null || true
        _dbm_kill_hard "$pid" || _dbm_log "pgbouncer $pid would not die"
        _dbm_wait_gone "$pid"
    fi
    if [[ -n $dir && -d $dir && ${DBM_KEEP_DIRS:-0} != 1 ]]; then
        rm -rf -- "$dir"
    elif [[ -n $dir && -d $dir ]]; then
        _dbm_log "kept $dir"
    fi
    unset _DBM_PGB_DIR _DBM_PGB_PID
    unset DBMANAGER_TEST_PGBOUNCER_URL DBMANAGER_TEST_PGBOUNCER_PID
}

# dbm_start_pgbouncer: pgbouncer in transaction pooling mode in front of the
# PostgreSQL of dbm_start_postgres (call that first), with a server pool of
# DBM_PGB_POOL_SIZE (default 4) connections, fewer than the tests' client
# threads, so that server connections are really shared. Exports
# DBMANAGER_TEST_PGBOUNCER_URL and DBMANAGER_TEST_PGBOUNCER_PID.
dbm_start_pgbouncer() {
    local t0 pgb dir port pgport user pw tries pid deadline started out
    t0=$(_dbm_now)
    if [[ -n ${_DBM_PGB_DIR:-} ]] && _dbm_alive "${_DBM_PGB_PID:-}"; then
        _dbm_log "pgbouncer already running (reusing it)"
        return 0
    fi
    _dbm_stop_pgbouncer
    if [[ -z ${DBMANAGER_TEST_POSTGRES_URL:-} || -z ${_DBM_PG_PORT:-} ]]; then
        _dbm_fail "dbm_start_pgbouncer needs the PostgreSQL of dbm_start_postgres; start it first"
        return 1
    fi
    pgb=$(command -v pgbouncer 2>/dev/null) || pgb=/usr/sbin/pgbouncer
    if [[ ! -x $pgb ]]; then
        _dbm_log "pgbouncer not found; installing it"
        _dbm_apt_install pgbouncer || return 1
        pgb=$(command -v pgbouncer 2>/dev/null) || pgb=/usr/sbin/pgbouncer
        [[ -x $pgb ]] || {
            _dbm_fail "pgbouncer installed but not found"
            return 1
        }
    fi
    # postgresql://user:password@127.0.0.1:port/appdb
    if ! [[ $DBMANAGER_TEST_POSTGRES_URL =~ ^postgresql://([^:]+):([^@]+)@ ]]; then
        _dbm_fail "cannot read the user and password of DBMANAGER_TEST_POSTGRES_URL"
        return 1
    fi
    user=${BASH_REMATCH[1]}
    pw=${BASH_REMATCH[2]}
    pgport=$_DBM_PG_PORT

    dir=$(mktemp -d "${DBM_TMPDIR:-/tmp}/dbmanager-pgb.XXXXXX") || {
        _dbm_fail "mktemp -d failed"
        return 1
    }
    _DBM_PGB_DIR=$dir
    printf '%s\n' "$$" >"$dir/owner" || true
    chmod 0700 "$dir" || true
    (umask 077 && printf '"%s" "%s"\n' "$user" "$pw" >"$dir/userlist.txt") || {
        _dbm_fail "could not write $dir/userlist.txt"
        _dbm_stop_pgbouncer
        return 1
    }

    started=0
    for tries in 1 2 3; do
        port=$(_dbm_free_port) || {
            _dbm_fail "could not find a free port on 127.0.0.1"
            _dbm_stop_pgbouncer
            return 1
        }
        printf '%s\n' \
            '[databases]' \
            "appdb = host=127.0.0.1 port=$pgport dbname=appdb" \
            '' \
            '[pgbouncer]' \
            'listen_addr = 127.0.0.1' \
            "listen_port = $port" \
            "unix_socket_dir = $dir" \
            'auth_type = scram-sha-256' \
            "auth_file = $dir/userlist.txt" \
            'pool_mode = transaction' \
            "default_pool_size = ${DBM_PGB_POOL_SIZE:-4}" \
            'max_client_conn = 1000' \
            'ignore_startup_parameters = extra_float_digits,options' \
            "logfile = $dir/pgbouncer.log" \
            "pidfile = $dir/pgbouncer.pid" >"$dir/pgbouncer.ini"
        : >"$dir/pgbouncer.log"
        rm -f -- "$dir/pgbouncer.pid"
        if _dbm_is_root; then
            chown -R postgres:postgres "$dir" || true
            (cd "$dir" && timeout 30 runuser -u postgres -- "$pgb" -d "$dir/pgbouncer.ini") >"$dir/start.log" 2>&1
        else
            (cd "$dir" && timeout 30 "$pgb" -d "$dir/pgbouncer.ini") >"$dir/start.log" 2>&1
        fi
        deadline=$((SECONDS + ${DBM_START_TIMEOUT:-60}))
        while ((SECONDS < deadline)); do
            if out=$(_dbm_psql "postgresql://$user:$pw@127.0.0.1:$port/appdb" "SELECT 1" 2>&1); then
                started=1
                break
            fi
            if [[ -s $dir/pgbouncer.pid ]] && ! _dbm_alive "$(cat "$dir/pgbouncer.pid")"; then break; fi
            if [[ ! -s $dir/pgbouncer.pid ]] && grep -q 'FATAL' "$dir/pgbouncer.log" 2>/dev/null; then break; fi
            sleep 0.1
        done
        ((started)) && break
        if ((tries < 3)) && grep -qE 'Address already in use|could not bind' "$dir/pgbouncer.log" 2>/dev/null; then
            _dbm_log "pgbouncer: port $port was taken, trying another one"
            if [[ -s $dir/pgbouncer.pid ]]; then _dbm_kill_hard "$(cat "$dir/pgbouncer.pid")"; fi
            continue
        fi
        printf '%s\n' "$out" >>"$dir/start.log"
        _dbm_fail "pgbouncer did not answer on 127.0.0.1:$port within ${DBM_START_TIMEOUT:-60}s" "$dir/start.log" "$dir/pgbouncer.log"
        _dbm_stop_pgbouncer
        return 1
    done
    pid=$(cat "$dir/pgbouncer.pid" 2>/dev/null) || pid=
    _DBM_PGB_PID=$pid
    export DBMANAGER_TEST_PGBOUNCER_URL="postgresql://$user:$pw@127.0.0.1:$port/appdb"
    export DBMANAGER_TEST_PGBOUNCER_PID=$pid
    _dbm_log "pgbouncer $("$pgb" --version 2>/dev/null | awk 'NR == 1 { print $2 }') ready on 127.0.0.1:$port in transaction mode, ${DBM_PGB_POOL_SIZE:-4} server connections (pid $pid, $(_dbm_elapsed "$t0") s)"
}

# ---------------------------------------------------------------- private servers

# dbm_private_server postgres|mariadb: another server of its own, for a test
# that stops, restarts or freezes it (so that no other test loses its server).
# Prints KEY=VALUE lines on stdout: URL, ADMIN_URL, PID, DIR (logs go to
# stderr). The caller removes it with `dbm_private_ctl DIR remove`; one left
# behind is removed by a later start two hours after its owner is gone.
dbm_private_server() {
    local kind=${1:-}
    (
        # A subshell: the caller's own servers (if any) are not touched.
        unset _DBM_PG_DIR _DBM_PG_PID _DBM_PG_PORT _DBM_MY_DIR _DBM_MY_PID _DBM_MY_PORT _DBM_MY_LAUNCH_PID
        case $kind in
        postgres)
            dbm_start_postgres >&2 || exit 1
            # A plain `pg_ctl start` comes back on the same port and socket.
            printf "listen_addresses = '127.0.0.1'\nport = %s\nunix_socket_directories = '%s'\n" \
                "$_DBM_PG_PORT" "$_DBM_PG_DIR" >>"$_DBM_PG_DIR/data/postgresql.auto.conf"
            printf 'postgres\n' >"$_DBM_PG_DIR/kind"
            # For a standby of this one (dbm_private_server postgres-standby).
            (umask 077 && printf '%s\n%s\n%s\n' "$_DBM_PG_PORT" "$DBMANAGER_TEST_POSTGRES_ADMIN_URL" \
                "$DBMANAGER_TEST_POSTGRES_URL" >"$_DBM_PG_DIR/primary")
            printf 'URL=%s\nADMIN_URL=%s\nPID=%s\nDIR=%s\n' "$DBMANAGER_TEST_POSTGRES_URL" \
                "$DBMANAGER_TEST_POSTGRES_ADMIN_URL" "$DBMANAGER_TEST_POSTGRES_PID" "$_DBM_PG_DIR"
            ;;
        postgres-standby)
            local pdir=${2:-} pport admin app superpw apppw rest
            if [[ -z $pdir || ! -f $pdir/primary ]]; then
                _dbm_fail "dbm_private_server postgres-standby: '$pdir' is not a private PostgreSQL's folder"
                exit 1
            fi
            { read -r pport && read -r admin && read -r app; } <"$pdir/primary"
            rest=${admin#postgresql://postgres:}
            superpw=${rest%%@*}
            rest=${app#postgresql://app:}
            apppw=${rest%%@*}
            _dbm_pg_standby "$pport" "$superpw" || exit 1
            printf 'URL=%s\nADMIN_URL=%s\nPID=%s\nDIR=%s\n' \
                "postgresql://app:$apppw@127.0.0.1:$_DBM_SB_PORT/appdb" \
                "postgresql://postgres:$superpw@127.0.0.1:$_DBM_SB_PORT/appdb" "$_DBM_SB_PID" "$_DBM_SB_DIR"
            ;;
        mariadb)
            dbm_start_mariadb >&2 || exit 1
            # The exact command line, for `dbm_private_ctl DIR start`.
            tr '\0' '\n' <"/proc/$_DBM_MY_PID/cmdline" >"$_DBM_MY_DIR/cmdline"
            printf 'mariadb\n' >"$_DBM_MY_DIR/kind"
            printf 'URL=%s\nADMIN_URL=%s\nPID=%s\nDIR=%s\n' "$DBMANAGER_TEST_MYSQL_URL" \
                "$DBMANAGER_TEST_MYSQL_ADMIN_URL" "$DBMANAGER_TEST_MYSQL_PID" "$_DBM_MY_DIR"
            ;;
        *)
            _dbm_fail "dbm_private_server: say postgres or mariadb"
            exit 1
            ;;
        esac
    )
}

# dbm_private_ctl DIR stop|start|pid|remove, for a server of
# dbm_private_server. Bounded; `pid` prints the server's pid (empty when down).
dbm_private_ctl() {
    local dir=${1:-} action=${2:-} kind pid bin admin deadline args=()
    if [[ -z $dir || ! -f $dir/kind ]]; then
        _dbm_fail "dbm_private_ctl: '$dir' is not a private server's folder"
        return 1
    fi
    kind=$(cat "$dir/kind")
    pid=
    if [[ $kind == postgres && -f $dir/data/postmaster.pid ]]; then
        pid=$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null) || pid=
    elif [[ $kind == mariadb && -s $dir/pid ]]; then
        pid=$(cat "$dir/pid" 2>/dev/null) || pid=
    fi
    _dbm_alive "$pid" || pid=
    case $kind/$action in
    */pid) printf '%s\n' "$pid" ;;
    postgres/stop)
        [[ -n $pid ]] || return 0
        _dbm_cont_tree "$pid"
        bin=$(_dbm_pg_bin) || return 1
        if ! _DBM_PG_DIR=$dir _dbm_as_pg timeout 40 "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 30 stop >/dev/null 2>&1; then
            kill -QUIT "$pid" 2>/dev/null || true
            _dbm_wait_dead "$pid" 10 || _dbm_kill_hard "$pid"
        fi
        _dbm_wait_gone "$pid"
        ;;
    postgres/start)
        [[ -z $pid ]] || return 0
        bin=$(_dbm_pg_bin) || return 1
        if ! _DBM_PG_DIR=$dir _dbm_as_pg timeout 70 "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 start >/dev/null 2>&1; then
            _dbm_fail "the private PostgreSQL in $dir did not start again" "$dir/log"
            return 1
        fi
        ;;
    mariadb/stop)
        [[ -n $pid ]] || return 0
        kill -CONT "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
        _dbm_wait_dead "$pid" 30 || _dbm_kill_hard "$pid"
        _dbm_wait_gone "$pid"
        ;;
    mariadb/start)
        [[ -z $pid ]] || return 0
        mapfile -t args <"$dir/cmdline"
        "${args[@]}" </dev/null >>"$dir/stdout.log" 2>&1 &
        disown "$!" 2>/dev/null || true
        admin=$(_dbm_mariadb_tool mariadb-admin mysqladmin) || return 1
        deadline=$((SECONDS + ${DBM_START_TIMEOUT:-60}))
        until timeout 10 "$admin" --defaults-file="$dir/client.cnf" --connect-timeout=2 ping >/dev/null 2>&1; do
            if ((SECONDS >= deadline)); then
                _dbm_fail "the private MariaDB in $dir did not start again" "$dir/mariadbd.err"
                return 1
            fi
            sleep 0.1
        done
        ;;
    postgres/promote)
        [[ -n $pid ]] || {
            _dbm_fail "the private PostgreSQL in $dir is not running; nothing to promote"
            return 1
        }
        bin=$(_dbm_pg_bin) || return 1
        if ! _DBM_PG_DIR=$dir _dbm_as_pg timeout 70 "$bin/pg_ctl" -D "$dir/data" -w -t 60 promote >/dev/null 2>&1; then
            _dbm_fail "the private PostgreSQL in $dir could not be promoted" "$dir/log"
            return 1
        fi
        ;;
    */remove)
        dbm_private_ctl "$dir" stop || true
        if [[ ${DBM_KEEP_DIRS:-0} != 1 ]]; then rm -rf -- "$dir"; fi
        ;;
    *)
        _dbm_fail "dbm_private_ctl: unknown action '$action' (stop, start, pid, promote or remove)"
        return 1
        ;;
    esac
}

# ---------------------------------------------------------------- all

# Print the exported DBMANAGER_TEST_* variables, passwords masked.
dbm_print_env() {
    local v val
    for v in DBMANAGER_TEST_POSTGRES_URL DBMANAGER_TEST_POSTGRES_ADMIN_URL \
        DBMANAGER_TEST_POSTGRES_PGDATA DBMANAGER_TEST_POSTGRES_PID \
        DBMANAGER_TEST_POSTGRES_REPLICA_URL DBMANAGER_TEST_POSTGRES_REPLICA_ADMIN_URL \
        DBMANAGER_TEST_MYSQL_URL DBMANAGER_TEST_MYSQL_ADMIN_URL DBMANAGER_TEST_MYSQL_PID \
        DBMANAGER_TEST_PUSHGATEWAY_URL DBMANAGER_TEST_PROMTOOL DBMANAGER_TEST_PYWAY \
        DBMANAGER_TEST_MSSQL_URL DBMANAGER_TEST_MSSQL_PID \
        DBMANAGER_TEST_PGBOUNCER_URL DBMANAGER_TEST_PGBOUNCER_PID; do
        val=${!v:-}
        [[ -n $val ]] || continue
        # scheme://user:password@host -> scheme://user:***@host
        if [[ $val =~ ^([a-z]+://[^:/@]+:)[^@]*(@.*)$ ]]; then
            val="${BASH_REMATCH[1]}***${BASH_REMATCH[2]}"
        fi
        printf 'dbm: exported %s=%s\n' "$v" "$val" >&2
    done
}

dbm_stop_all() {
    local had=0
    # pgbouncer first: it sits in front of PostgreSQL.
    if [[ -n ${_DBM_PGB_DIR:-} || -n ${_DBM_PGB_PID:-} ]]; then
        had=1
        _dbm_stop_pgbouncer
    fi
    # The replica before its primary.
    if [[ -n ${_DBM_PGR_DIR:-} ]]; then
        had=1
        _dbm_stop_pg_replica
    fi
    if [[ -n ${_DBM_PG_DIR:-} || -n ${_DBM_PG_PID:-} ]]; then
        had=1
        _dbm_stop_postgres
    fi
    if [[ -n ${_DBM_MY_DIR:-} || -n ${_DBM_MY_PID:-} ]]; then
        had=1
        _dbm_stop_mariadb
    fi
    if [[ -n ${_DBM_PGW_PID:-} ]]; then
        had=1
        _dbm_stop_pushgateway
    fi
    if [[ -n ${_DBM_MS_DIR:-} || -n ${_DBM_MS_PID:-} ]]; then
        had=1
        _dbm_stop_mssql
    fi
    if ((had)); then _dbm_log "servers stopped"; fi
    return 0
}
