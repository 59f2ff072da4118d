#!/usr/bin/env bash
# Several servers behind a load balancer (docs/SCALING.md), on this machine's loopback: three
# quictun-server instances sharing a certificate and a cluster key, nginx's stream module in
# front of them on 127.0.1.100, a web server as the application and one quictun-client. It
# fetches a file through the tunnel, kills the instance holding the client (kill -9), shows
# the client told at once by another instance and fetching again, then stops everything it
# started. Needs nginx with its stream module (Debian: nginx-light libnginx-mod-stream),
# python3 and curl.
set -euo pipefail
cd "$(dirname "$0")/.."

nginx=/usr/sbin/nginx
stream_module=/usr/lib/nginx/modules/ngx_stream_module.so
for need in "$nginx" "$stream_module"; do
    [ -e "$need" ] || { echo "cluster-demo: $need missing (apt-get install nginx-light libnginx-mod-stream)" >&2; exit 1; }
done
. scripts/common.sh
need_tools cluster-demo python3 curl

echo "==> building"
bin=$(release_bin_dir)

work=$(mktemp -d)
pids=()
nginx_pid=""
cleanup() {
    # nginx: SIGTERM to the master, which stops its workers.
    [ -n "$nginx_pid" ] && kill -TERM "$nginx_pid" 2>/dev/null || true
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c "import socket,sys; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM if sys.argv[2]=='udp' else socket.SOCK_STREAM); s.bind((sys.argv[1],0)); print(s.getsockname()[1])" "$1" "$2"; }
web_port=$(free_port 127.0.0.1 tcp)
tunnel_port=$(free_port 127.0.0.1 tcp)
balancer_port=$(free_port 127.0.1.100 udp)

echo "==> a web server on 127.0.0.1:$web_port"
mkdir "$work/www"
head -c $((8 * 1024 * 1024)) /dev/urandom > "$work/www/file.bin"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >"$work/web.log" 2>&1 &
pids+=($!)

echo "==> a cluster key and three instances sharing it and one certificate"
(umask 077; "$bin/quictun-server" --generate cluster-key > "$work/cluster.key")
fixtures=host/tests/fixtures/keys
declare -A instance_pid instance_api
upstreams=""
for id in 1 2 3; do
    port=$(free_port "127.0.1.$id" udp)
    api=$(free_port 127.0.0.1 tcp)
    "$bin/quictun-server" --listen-on "127.0.1.$id:$port" --server-id "$id" \
        --cert-file "$fixtures/ec-sec1.pem" --key-file "$fixtures/ec-sec1.key" \
        --cluster-key-file "$work/cluster.key" --max-handshakes-per-address 1024 \
        --allow-target "127.0.0.1:$web_port" --state-dir "$work/state-$id" \
        --httpd-listen-on "127.0.0.1:$api" >"$work/server-$id.log" 2>&1 &
    instance_pid[$id]=$!
    instance_api[$id]=$api
    pids+=($!)
    upstreams+="        server 127.0.1.$id:$port max_fails=1 fail_timeout=30s;"$'\n'
    echo "    instance $id on udp 127.0.1.$id:$port, REST API 127.0.0.1:$api"
done

echo "==> nginx on udp 127.0.1.100:$balancer_port, hashing each client's address and port"
cat > "$work/nginx.conf" <<EOF
load_module $stream_module;
worker_processes 1;
pid $work/nginx.pid;
events { worker_connections 1024; }
stream {
    upstream quictun {
        hash \$remote_addr\$remote_port consistent;
$upstreams    }
    server {
        listen 127.0.1.100:$balancer_port udp;
        proxy_pass quictun;
        proxy_timeout 60s;
    }
}
EOF
"$nginx" -p "$work" -c "$work/nginx.conf" -e "$work/nginx-error.log" -g 'daemon off;' &
nginx_pid=$!

fingerprint=$(server_fingerprint cluster-demo "$work/server-1.log")

echo "==> quictun-client on tcp 127.0.0.1:$tunnel_port, pinned to $fingerprint"
"$bin/quictun-client" --listen-on "tcp:127.0.0.1:$tunnel_port" \
    --server-endpoint "127.0.1.100:$balancer_port" --server-cert-fingerprint "$fingerprint" \
    --token-source "tcp:127.0.0.1:$web_port" --keep-alive 1s --idle-timeout 5s \
    --httpd-listen-on "" --state-dir "$work/client-state" >"$work/client.log" 2>&1 &
pids+=($!)

fetch() {
    curl --silent --show-error --max-time 20 --output "$work/got.bin" \
        "http://127.0.0.1:$tunnel_port/file.bin"
    cmp -s "$work/got.bin" "$work/www/file.bin" || { echo "cluster-demo: the file differs" >&2; exit 1; }
}
for _ in $(seq 100); do fetch 2>/dev/null && break; sleep 0.1; done
fetch
echo "    8 MiB fetched through the tunnel, byte for byte"

holder=""
for id in 1 2 3; do
    open=$(curl --silent "http://127.0.0.1:${instance_api[$id]}/metrics" |
        sed -n 's/^quictun_connections_open{server_id="[0-9]*"} //p')
    [ "$open" = 1 ] && holder=$id
done
[ -n "$holder" ] || { echo "cluster-demo: no instance holds the client" >&2; exit 1; }
echo "==> instance $holder holds the client's connection: kill -9 ${instance_pid[$holder]}"
start=$(date +%s%N)
{ kill -9 "${instance_pid[$holder]}"; wait "${instance_pid[$holder]}"; } 2>/dev/null || true
for _ in $(seq 200); do
    grep -q "connection to the server lost" "$work/client.log" &&
        [ "$(grep -c "connected to server" "$work/client.log")" -ge 2 ] && break
    sleep 0.02
done
echo "    the client, $(( ($(date +%s%N) - start) / 1000000 )) ms later:"
grep -E "connection to the server lost|connected to server" "$work/client.log" | tail -n 2 | sed 's/^/      /'
fetch
echo "    fetched again through another instance, byte for byte"
echo "==> done; stopping everything"
