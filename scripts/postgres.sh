#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and benchmarks, on 127.0.0.1 only.
#
#   source scripts/postgres.sh && pg_start   # installs Debian's postgresql if missing (as root),
#                                            # initialises a cluster in a temp dir, starts it on a
#                                            # free port, creates database cloudmine, and exports
#                                            # CLOUDMINE_TEST_DATABASE_URL=postgres://cloudmine@127.0.0.1:PORT/cloudmine
#   pg_halt / pg_resume                      # stop and restart it, data kept (outage tests)
#   pg_stop                                  # stops it and removes the directory
#
# PostgreSQL refuses to run as root; as root the server runs as the `postgres` user.

pg_bin_dir() {
    ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

pg_start() {
    local bin
    bin=$(pg_bin_dir)
    if [ -z "$bin" ] || [ ! -x "$bin/initdb" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: PostgreSQL is not installed; run as root or: apt-get install postgresql" >&2
            return 1
        fi
        echo "postgres.sh: installing Debian's postgresql" >&2
        apt-get update -qq >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
        bin=$(pg_bin_dir)
    fi
    PG_DIR=$(mktemp -d /tmp/cloudmine-pg.XXXXXX)
    PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local as=()
    if [ "$(id -u)" = 0 ]; then
        chown postgres "$PG_DIR"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -D "$PG_DIR/data" -U cloudmine -A trust --no-sync -E UTF8 >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    "${as[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=300 -c fsync=on" start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    "$bin/createdb" -h 127.0.0.1 -p "$PG_PORT" -U cloudmine cloudmine
    export PG_BIN="$bin" PG_DIR PG_PORT
    export CLOUDMINE_TEST_DATABASE_URL="postgres://cloudmine@127.0.0.1:$PG_PORT/cloudmine"
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT ($PG_DIR)" >&2
}

# Stops the server but keeps its data (an outage); pg_resume starts it again on the same port.
pg_halt() {
    local as=()
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null
}

pg_resume() {
    local as=()
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-h 127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=300 -c fsync=on" start >/dev/null
}

pg_stop() {
    if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
        local as=()
        [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
        "${as[@]}" "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
        rm -rf "$PG_DIR"
    fi
}
