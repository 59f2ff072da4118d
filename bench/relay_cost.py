#!/usr/bin/env python3
"""What the tunnel's two processes, or the bare QUIC stream's (quinn-peer), spend on moving a
fixed amount of data over loopback, one connection, after a warm-up transfer.

Native (default): CPU seconds per GiB (user and system), minor page faults and context
switches per MiB, for the client and the server (from /proc/<pid>/stat and status).

--callgrind: the processes run under valgrind --tool=callgrind and the user-space
instructions per byte are counted (zeroed with callgrind_control -z after the warm-up, read
with callgrind_control -d after the transfer). Instruction counts do not depend on how loaded
the machine is, so relay variants can be compared on a shared machine; kernel work (system
calls, TCP, UDP) is not counted, and timing under valgrind differs from a native run.

Usage: python3 bench/relay_cost.py [--bin-dir target/release] [--mib 64] [--way up|down]
                                   [--path tunnel|quinn] [--callgrind] [--keep DIR]
"""
import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

CHUNK = 256 * 1024


def free_port(kind):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(listener):
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_one, args=(conn,), daemon=True).start()


def serve_one(conn):
    header = recv_exact(conn, 9)
    mode, length = header[:1], struct.unpack(">Q", header[1:])[0]
    if mode == b"g":
        block = b"\x5a" * CHUNK
        while length > 0:
            n = min(length, CHUNK)
            conn.sendall(block[:n])
            length -= n
    elif mode == b"s":
        while conn.recv(CHUNK):
            pass
    else:
        while True:
            data = conn.recv(4096)
            if not data:
                break
            conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    conn.close()


def recv_exact(conn, n):
    out = b""
    while len(out) < n:
        data = conn.recv(n - len(out))
        if not data:
            raise EOFError("closed early")
        out += data
    return out


def transfer(addr, way, length):
    conn = socket.create_connection(addr)
    conn.sendall((b"s" if way == "up" else b"g") + struct.pack(">Q", length))
    if way == "up":
        block = b"\x5a" * CHUNK
        left = length
        while left > 0:
            n = min(left, CHUNK)
            conn.sendall(block[:n])
            left -= n
        conn.shutdown(socket.SHUT_WR)
    got = 0
    while True:
        data = conn.recv(CHUNK)
        if not data:
            break
        got += len(data)
    conn.close()
    if way == "down" and got != length:
        raise RuntimeError(f"received {got} of {length}")


def echo_ok(addr):
    try:
        conn = socket.create_connection(addr, timeout=5)
        conn.sendall(b"e" + struct.pack(">Q", 0) + b"x")
        ok = conn.recv(1) == b"x"
        conn.close()
        return ok
    except OSError:
        return False


USE_CALLGRIND = False


def callgrind(out, *cmd):
    if not USE_CALLGRIND:
        return list(cmd)
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]


def proc_counts(pid):
    """utime + stime in seconds, minor faults, context switches (voluntary + not)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) / ticks, int(fields[12]) / ticks
    minflt = int(fields[7])
    # Every thread's switches, from /proc/<pid>/task/*/status.
    switches = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if "ctxt_switches" in line:
                        switches += int(line.split()[1])
        except OSError:
            pass
    return user, system, minflt, switches


def totals(path):
    with open(path) as f:
        for line in f:
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise RuntimeError(f"no totals in {path}")


def control(flag, pid):
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, stdout=subprocess.DEVNULL)


def dumps(directory, name):
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.startswith(name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin-dir", default="target/release")
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--way", choices=["up", "down"], default="up")
    ap.add_argument("--path", choices=["tunnel", "quinn"], default="tunnel")
    ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
    ap.add_argument("--keep", help="keep the callgrind files in this directory")
    args = ap.parse_args()
    global USE_CALLGRIND
    USE_CALLGRIND = args.callgrind
    length = args.mib << 20
    work = args.keep or tempfile.mkdtemp(prefix="callgrind-relay-")
    os.makedirs(work, exist_ok=True)
    procs = []
    try:
        if args.path == "tunnel":
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", 0))
            listener.listen(64)
            target = listener.getsockname()
            threading.Thread(target=serve, args=(listener,), daemon=True).start()
            quic, app = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
            server = subprocess.Popen(callgrind(
                f"{work}/server.cg", f"{args.bin_dir}/quictun-server",
                "--listen-on", f"127.0.0.1:{quic}", "--httpd-listen-on", "",
                "--state-dir", f"{work}/server", "--log-level", "warn",
                "--allow-target", f"{target[0]}:{target[1]}"),
                stderr=subprocess.DEVNULL)
            procs.append(server)
            client = subprocess.Popen(callgrind(
                f"{work}/client.cg", f"{args.bin_dir}/quictun-client",
                "--listen-on", f"tcp:127.0.0.1:{app}", "--server-endpoint", f"127.0.0.1:{quic}",
                "--token-source", f"tcp:{target[0]}:{target[1]}", "--insecure-skip-verify",
                "--httpd-listen-on", "", "--state-dir", f"{work}/client", "--log-level", "error"),
                stderr=subprocess.DEVNULL)
            procs.append(client)
            addr = ("127.0.0.1", app)
            deadline = time.time() + (120 if USE_CALLGRIND else 20)
            while not echo_ok(addr):
                if time.time() > deadline:
                    raise RuntimeError("the tunnel did not come up")
                time.sleep(0.5)
            transfer(addr, args.way, 4 << 20)  # warm-up
            run = lambda: transfer(addr, args.way, length)  # noqa: E731
        else:
            server = subprocess.Popen(callgrind(
                f"{work}/server.cg", f"{args.bin_dir}/quinn-peer", "server",
                "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
            procs.append(server)
            line = server.stdout.readline().split()
            client = subprocess.Popen(callgrind(
                f"{work}/client.cg", f"{args.bin_dir}/quinn-peer", "client", "--server", line[1]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                text=True)
            procs.append(client)
            assert client.stdout.readline().strip() == "connected"

            def ask(command):
                client.stdin.write(command + "\n")
                client.stdin.flush()
                answer = client.stdout.readline()
                if not answer.startswith("ok"):
                    raise RuntimeError(f"{command}: {answer!r}")

            ask(f"transfer {args.way} {4 << 20} 1")  # warm-up
            run = lambda: ask(f"transfer {args.way} {length} 1")  # noqa: E731
        if not USE_CALLGRIND:
            before = {n: proc_counts(p.pid) for n, p in (("client", client), ("server", server))}
            start = time.time()
            run()
            seconds = time.time() - start
            after = {n: proc_counts(p.pid) for n, p in (("client", client), ("server", server))}
            gib, mib = length / (1 << 30), length / (1 << 20)
            total = 0.0
            parts = []
            for n in ("client", "server"):
                d = [a - b for a, b in zip(after[n], before[n])]
                total += (d[0] + d[1]) / gib
                parts.append(f"{n} {(d[0] + d[1]) / gib:.2f} s/GiB (user {d[0] / gib:.2f}, "
                             f"sys {d[1] / gib:.2f}), {d[2] / mib:.1f} faults/MiB, "
                             f"{d[3] / mib:.1f} switches/MiB")
            print(f"{args.path} {args.way} {args.mib} MiB: {length * 8 / seconds / 1e9:.2f} Gbit/s, "
                  f"CPU {total:.2f} s/GiB; " + "; ".join(parts))
            return
        for p in (server, client):
            control("-z", p.pid)
        start = time.time()
        run()
        seconds = time.time() - start
        time.sleep(0.5)
        counts = {}
        for name, p in (("client", client), ("server", server)):
            control("-d", p.pid)
            time.sleep(0.5)
            files = [f for f in dumps(work, f"{name}.cg") if not f.endswith(f"{name}.cg")]
            counts[name] = totals(files[-1])
        both = counts["client"] + counts["server"]
        print(f"{args.path} {args.way} {args.mib} MiB in {seconds:.1f} s under callgrind: "
              f"client {counts['client'] / length:.2f}, server {counts['server'] / length:.2f}, "
              f"both {both / length:.2f} instructions/byte")
    finally:
        for p in procs:
            p.kill()
            p.wait()


if __name__ == "__main__":
    sys.exit(main())
