#!/usr/bin/env bash
# The quic-tun demo: a real web server on 127.0.0.1, reached through quictun-client and
# quictun-server over QUIC on loopback. Builds, starts everything, shows the data going
# through, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/common.sh
need_tools demo python3 curl

echo "==> building"
bin=$(release_bin_dir)

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
web_port=$(free_port); quic_port=$(free_port); tunnel_port=$(free_port)
server_api=$(free_port); client_api=$(free_port)

echo "==> a local web server on 127.0.0.1:$web_port (the application to reach)"
mkdir "$work/www"
echo "Hello through quic-tun!" > "$work/www/hello.txt"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$work/www/big.bin"
python3 -m http.server "$web_port" --bind 127.0.0.1 --directory "$work/www" >"$work/web.log" 2>&1 &
pids+=($!)

echo "==> quictun-server on udp 127.0.0.1:$quic_port, REST API on 127.0.0.1:$server_api"
# The server relays only to what --allow-target names: here the web server, nothing else.
"$bin/quictun-server" --listen-on "127.0.0.1:$quic_port" --state-dir "$work/server-state" \
    --allow-target "127.0.0.1:$web_port" \
    --httpd-listen-on "127.0.0.1:$server_api" >"$work/server.log" 2>&1 &
pids+=($!)

# The server logs its certificate's fingerprint at start: the client pins it.
fingerprint=$(server_fingerprint demo "$work/server.log")
echo "    its certificate: $fingerprint"

echo "==> quictun-client on tcp 127.0.0.1:$tunnel_port, token tcp:127.0.0.1:$web_port, REST API on 127.0.0.1:$client_api"
"$bin/quictun-client" --listen-on "tcp:127.0.0.1:$tunnel_port" \
    --httpd-listen-on "127.0.0.1:$client_api" \
    --server-endpoint "127.0.0.1:$quic_port" \
    --token-source "tcp:127.0.0.1:$web_port" \
    --server-cert-fingerprint "$fingerprint" --state-dir "$work/client-state" >"$work/client.log" 2>&1 &
pids+=($!)

# Wait until the web server, the tunnel's listener and the REST APIs accept connections.
for port in "$web_port" "$tunnel_port" "$server_api" "$client_api"; do
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
done

echo
echo "==> curl http://127.0.0.1:$tunnel_port/hello.txt (through the tunnel)"
curl -sS --max-time 10 "http://127.0.0.1:$tunnel_port/hello.txt"

echo
echo "==> 64 MiB through the tunnel, checked byte for byte"
start=$(date +%s.%N)
curl -sS --max-time 60 -o "$work/big.copy" "http://127.0.0.1:$tunnel_port/big.bin"
end=$(date +%s.%N)
if cmp -s "$work/www/big.bin" "$work/big.copy"; then
    python3 -c "import sys; s=float(sys.argv[2])-float(sys.argv[1]); print(f'identical: 64 MiB in {s:.2f} s ({64*8/1024/s:.2f} Gbit/s, through a Python web server)')" "$start" "$end"
else
    echo "demo: the copy differs from the original" >&2
    exit 1
fi

echo
echo "==> a connection held open through the tunnel: curl -s http://127.0.0.1:$client_api/tunnels"
exec 3<>"/dev/tcp/127.0.0.1/$tunnel_port"
tunnels=""
for _ in $(seq 50); do
    tunnels=$(curl -sS --max-time 5 "http://127.0.0.1:$client_api/tunnels")
    [ "$tunnels" != "[]" ] && break
    sleep 0.1
done
python3 -m json.tool <<<"$tunnels" | sed 's/^/  /'
exec 3>&-

echo
echo "==> the server's accounting: curl -s http://127.0.0.1:$server_api/metrics | grep -v '^#'"
curl -sS --max-time 5 "http://127.0.0.1:$server_api/metrics" | grep -v '^#' | sed 's/^/  /'

echo
echo "==> what the endpoints logged"
sed 's/^/  server: /' "$work/server.log"
sed 's/^/  client: /' "$work/client.log"
echo
echo "==> done; everything started here is stopped"
