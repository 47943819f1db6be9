# Shared by the scripts in this folder: sourced, never run.

BM_KAFKA_VERSION=${BM_KAFKA_VERSION:-4.1.1}
BM_CACHE=${BIOMATCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/biomatch}

log() { printf '%s %s\n' "[$(date +%H:%M:%S)]" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run as root directly, otherwise through sudo.
sudo_maybe() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

kafka_home() { printf '%s/kafka-%s' "$BM_CACHE" "$BM_KAFKA_VERSION"; }
venv_dir() { printf '%s/venv' "$BM_CACHE"; }

# The Java 17 runtime (Kafka 4.x brokers need 17 or newer).
java17_home() {
    local d
    for d in /usr/lib/jvm/java-17-openjdk-amd64 /usr/lib/jvm/java-17-openjdk-*; do
        if [ -x "$d/bin/java" ]; then printf '%s' "$d"; return; fi
    done
    die "no Java 17 runtime found; run scripts/setup"
}

# A TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Wait until 127.0.0.1:$1 accepts connections, at most $2 seconds.
wait_port() {
    local port=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}
