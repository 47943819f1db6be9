# The Redis Cluster of `scripts/services start --redis-cluster N`: sourced by
# scripts/services (after lib.sh), never run.
#
# N masters with one replica each, every node a redis-server on two free
# loopback ports (clients, cluster bus) with its own folder
# $dir/redis-cluster/<port>/ holding redis.conf, nodes.conf, redis.pid and
# redis.log. The cluster is formed with `redis-cli --cluster create` and is
# ready when every node reports cluster_state:ok and all 16384 slots.
# cluster-node-timeout is 2 s, so a killed master is replaced by its replica
# within a few seconds (the failover tests rely on it). A node started again
# with `redis-server <its redis.conf>` rejoins (as a replica of whoever took
# over its slots). Every node also serves TLS on a third port (the
# throwaway certificates of make_certs, client certificates required there).
# The cluster bus and replication use TLS too (tls-cluster yes): only then
# do the nodes learn each other's TLS ports, so CLUSTER SHARDS and MOVED
# name TLS ports to TLS clients and plain ports to plain clients.
#
# services.env gets BIOMATCH_REDIS_URL=redis+cluster://127.0.0.1:P1,... (the
# masters as created; lib/store follows the map from there),
# BIOMATCH_REDIS_TLS_URL=rediss+cluster://127.0.0.1:T1,... with
# BIOMATCH_REDIS_TLS_CA_FILE, _CERT_FILE and _KEY_FILE, and
# BIOMATCH_REDIS_CLUSTER_NODES, every node's client port.

redis_cluster_dir() { printf '%s/redis-cluster' "$dir"; }

# N distinct free ports.
redis_cluster_ports() {
    local want=$1 p ports=()
    while ((${#ports[@]} < want)); do
        p=$(free_port)
        [[ " ${ports[*]} " == *" $p "* ]] || ports+=("$p")
    done
    printf '%s\n' "${ports[@]}"
}

redis_cluster_start() {
    local masters=$1 n i port bus tport root t nodes=() all ok
    ((masters >= 3)) || die "--redis-cluster needs at least 3 masters (Redis Cluster's minimum)"
    n=$((masters * 2))
    root=$(redis_cluster_dir)
    t=$root/tls
    mkdir -p "$root"
    make_certs "$t"
    mapfile -t all < <(redis_cluster_ports $((n * 3)))
    for ((i = 0; i < n; i++)); do
        port=${all[i]}
        bus=${all[n + i]}
        tport=${all[2 * n + i]}
        mkdir -p "$root/$port"
        cat >"$root/$port/redis.conf" <<EOF
bind 127.0.0.1
port $port
protected-mode yes
cluster-enabled yes
cluster-port $bus
cluster-config-file $root/$port/nodes.conf
cluster-node-timeout 2000
appendonly no
save ""
dir $root/$port
tls-port $tport
tls-cert-file $t/server.crt
tls-key-file $t/server.key
tls-ca-cert-file $t/ca.crt
tls-client-cert-file $t/client.crt
tls-client-key-file $t/client.key
tls-auth-clients yes
tls-cluster yes
tls-replication yes
daemonize yes
pidfile $root/$port/redis.pid
logfile $root/$port/redis.log
EOF
        redis-server "$root/$port/redis.conf"
        nodes+=("127.0.0.1:$tport")
    done
    for port in "${all[@]:0:n}"; do
        for _ in $(seq 100); do
            redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
            sleep 0.1
        done
    done
    redis-cli --tls --cacert "$t/ca.crt" --cert "$t/client.crt" --key "$t/client.key" \
        --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
        >"$root/create.log" 2>&1 || { cat "$root/create.log" >&2; die "redis-cli --cluster create failed"; }
    for _ in $(seq 300); do
        ok=1
        for port in "${all[@]:0:n}"; do
            redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' |
                grep -q '^cluster_state:ok' || { ok=0; break; }
            redis-cli -p "$port" cluster info 2>/dev/null | tr -d '\r' |
                grep -q '^cluster_slots_ok:16384' || { ok=0; break; }
        done
        ((ok)) && break
        sleep 0.1
    done
    ((ok)) || die "the Redis Cluster did not reach cluster_state:ok"
    local ver seeds tseeds
    ver=$(redis-cli -p "${all[0]}" info server | tr -d '\r' | sed -n 's/^redis_version://p')
    seeds=$(printf '127.0.0.1:%s,' "${all[@]:0:masters}")
    tseeds=$(printf '127.0.0.1:%s,' "${all[@]:2*n:masters}")
    log "redis-server $ver Redis Cluster: $masters masters + $masters replicas on 127.0.0.1 ports ${all[*]:0:n}"
    {
        printf 'BIOMATCH_REDIS_URL=redis+cluster://%s\n' "${seeds%,}"
        printf 'BIOMATCH_REDIS_TLS_URL=rediss+cluster://%s\n' "${tseeds%,}"
        printf 'BIOMATCH_REDIS_TLS_CA_FILE=%s\n' "$t/ca.crt"
        printf 'BIOMATCH_REDIS_TLS_CERT_FILE=%s\n' "$t/client.crt"
        printf 'BIOMATCH_REDIS_TLS_KEY_FILE=%s\n' "$t/client.key"
        printf 'BIOMATCH_REDIS_CLUSTER_NODES="%s"\n' "${all[*]:0:n}"
    } >>"$envfile"
}

redis_cluster_stop() {
    local root pidfile
    root=$(redis_cluster_dir)
    [ -d "$root" ] || return 0
    for pidfile in "$root"/*/redis.pid; do
        [ -f "$pidfile" ] && stop_pid "$pidfile" "redis-server (cluster node)"
    done
    rm -rf "$root"
}
