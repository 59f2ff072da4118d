//! Several server instances behind a real UDP load balancer (SPEC §12, docs/SCALING.md): the
//! reference deployment, nginx's stream module hashing each client's address and port to one
//! of three instances that share a certificate and a cluster key. Real processes on loopback
//! addresses of their own (127.0.1.x), nginx started in the foreground with its own
//! configuration and stopped by its PID.
//!
//! Ignored by plain `cargo test` (they need nginx and its stream module); `scripts/test.sh`
//! installs both and runs them.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::Running;
use common::*;
use quictun::wire::addr::Address;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The balancer's address: the one address clients know.
const VIRTUAL_IP: &str = "127.0.1.100";
const NGINX: &str = "/usr/sbin/nginx";
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// nginx in the foreground with a configuration of its own; stopped by PID when dropped.
struct Nginx {
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Balances UDP on `listen` over `upstreams`, by each client's address and port.
    fn start(listen: SocketAddr, upstreams: &[SocketAddr]) -> Nginx {
        for needed in [NGINX, STREAM_MODULE] {
            assert!(
                Path::new(needed).exists(),
                "{needed} missing: run scripts/test.sh, which installs nginx and its stream \
                 module (Debian: apt-get install nginx-light libnginx-mod-stream)"
            );
        }
        let dir = TempDir::new("nginx");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir.0, listen, upstreams)).unwrap();
        let child = Command::new(NGINX)
            // A process group of its own, so its workers can be stopped with it.
            .process_group(0)
            .arg("-p")
            .arg(&dir.0)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        Nginx { child, dir }
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM: the master stops its workers), then SIGKILL to the whole
    /// group in case the master could not.
    fn drop(&mut self) {
        let group = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &group]).status();
        let stopped = (0..40).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{group}")])
                .status();
        }
        let _ = self.child.wait();
    }
}

/// The reference configuration of docs/SCALING.md: 4-tuple hashing, no limit on responses,
/// an idle time-out longer than the tunnel's keep-alive, and a failed instance taken out at
/// its first error.
fn nginx_conf(dir: &Path, listen: SocketAddr, upstreams: &[SocketAddr]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|u| format!("        server {u} max_fails=1 fail_timeout=30s;\n"))
        .collect();
    format!(
        "load_module {STREAM_MODULE};\n\
         worker_processes 1;\n\
         pid {pid};\n\
         events {{ worker_connections 4096; }}\n\
         stream {{\n\
         \x20   upstream quictun {{\n\
         \x20       hash $remote_addr$remote_port consistent;\n\
         {servers}\
         \x20   }}\n\
         \x20   server {{\n\
         \x20       listen {listen} udp;\n\
         \x20       proxy_pass quictun;\n\
         \x20       proxy_timeout 60s;\n\
         \x20   }}\n\
         }}\n",
        pid = dir.join("nginx.pid").display(),
    )
}

/// A free UDP port on `ip` (nothing else uses these test addresses).
fn free_udp_port(ip: &str) -> SocketAddr {
    let socket = UdpSocket::bind((ip, 0)).expect("a loopback address of 127.0.0.0/8");
    socket.local_addr().unwrap()
}

/// The cluster's shared secrets: one certificate and key, one cluster key.
struct Cluster {
    dir: TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let dir = TempDir::new("cluster");
        let key = dir.join("cluster.key");
        std::fs::write(&key, format!("{}\n", "5a".repeat(32))).unwrap();
        set_mode(&key, 0o600);
        Cluster { dir }
    }

    /// Instance `id` on 127.0.1.`id`, sharing the certificate and (when `shared`) the key.
    async fn instance(&self, id: u8, shared: bool) -> Running {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/keys");
        let mut launch = Launch::server()
            .args(["--listen-on", &format!("127.0.1.{id}:0")])
            .args(["--server-id", &id.to_string()])
            .arg("--cert-file")
            .arg(fixtures.join("ec-sec1.pem"))
            .arg("--key-file")
            .arg(fixtures.join("ec-sec1.key"))
            .args(["--httpd-listen-on", "127.0.0.1:0"]);
        if shared {
            launch = launch
                .arg("--cluster-key-file")
                .arg(self.dir.join("cluster.key"));
        }
        launch.start().await
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The SHA-256 fingerprint the server logged for its certificate.
fn fingerprint(server: &Running) -> String {
    let lines = server.lines();
    let line = lines
        .iter()
        .find(|l| l.contains("server certificate"))
        .expect("the server logs its certificate's fingerprint");
    field_of(line, "fingerprint")
}

/// The JSON body of `GET path` on a REST API.
fn get_json(api: SocketAddr, path: &str) -> Value {
    let answer = http_get(api, path);
    let body = answer.split_once("\r\n\r\n").expect("a body").1;
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// How many QUIC connections an instance holds.
fn connections(instance: &Running) -> usize {
    let api = instance.api.expect("the instance's REST API");
    get_json(api, "/connections").as_array().map_or(0, Vec::len)
}

/// A client of the virtual address, pinned to the shared certificate, tunnelling to `target`.
async fn client(balancer: SocketAddr, pin: &str, target: &Address) -> Running {
    Launch::client()
        .args(["--server-endpoint", &balancer.to_string()])
        .args(["--server-cert-fingerprint", pin])
        .args(["--token-source", &target.to_string()])
        .args(["--keep-alive", "500ms", "--idle-timeout", "5s"])
        .start()
        .await
}

/// One tunnel through `client`: `len` bytes echoed back byte for byte.
async fn echo_through(client: &Running, len: usize, seed: u64) {
    let data = pattern(len, seed);
    let mut conn = connect_tcp(&client.app_addr()).await;
    let (mut reader, mut writer) = conn.split();
    let write = async {
        writer.write_all(&data).await.unwrap();
        writer.shutdown().await.unwrap();
    };
    let mut back = Vec::with_capacity(len);
    let read = reader.read_to_end(&mut back);
    let (_, read) = within(60, async { tokio::join!(write, read) }).await;
    read.unwrap();
    assert!(back == data, "{len} bytes came back different");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx and its stream module: run scripts/test.sh"]
async fn three_instances_behind_nginx_serve_a_dozen_clients_and_survive_one_dying() {
    let echo = app_server_tcp(Behaviour::Echo).await;
    let cluster = Cluster::new();
    let mut instances = Vec::new();
    for id in 1..=3 {
        instances.push(cluster.instance(id, true).await);
    }
    let pin = fingerprint(&instances[0]);
    for other in &instances[1..] {
        assert_eq!(fingerprint(other), pin, "one certificate for all instances");
    }
    let balancer = free_udp_port(VIRTUAL_IP);
    let upstreams: Vec<SocketAddr> = instances.iter().map(Running::quic_addr).collect();
    let nginx = Nginx::start(balancer, &upstreams);

    // A dozen clients, each with its own source port: the balancer spreads them.
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(client(balancer, &pin, &echo.addr).await);
    }
    for (n, client) in clients.iter().enumerate() {
        echo_through(client, 1 << 20, n as u64).await;
    }
    let held: Vec<usize> = instances.iter().map(connections).collect();
    assert_eq!(
        held.iter().sum::<usize>(),
        12,
        "{held:?}\n{}",
        nginx.error_log()
    );
    assert!(
        held.iter().filter(|&&n| n > 0).count() >= 2,
        "all on one instance: {held:?}"
    );

    // The instance holding the most clients dies without a word.
    let busiest = (0..3).max_by_key(|&i| held[i]).unwrap();
    let dead = instances.remove(busiest);
    let lost = held[busiest];
    let killed = Command::new("kill")
        .args(["-9", &dead.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let died = Instant::now();

    // The dead instance's clients hear of it from another instance: their next packet (a
    // keep-alive, every 500 ms) reaches it through nginx and is answered with a stateless
    // reset the shared key makes valid; they reconnect at once. The others are untouched.
    let reconnected = |c: &Running| c.log().matches("connected to server").count() == 2;
    let all_back = wait_until(Duration::from_secs(3), || {
        let back = clients.iter().filter(|c| reconnected(c)).count();
        std::future::ready(back == lost)
    })
    .await;
    let recovered = died.elapsed();
    assert!(
        all_back.is_ok(),
        "not all {lost} clients reconnected within 3 s"
    );
    println!("the dead instance's {lost} clients reconnected {recovered:?} after the kill");
    for client in &clients {
        let log = client.log();
        match log
            .lines()
            .find(|l| l.contains("connection to the server lost"))
        {
            // Told at once by another instance, not left to the idle time-out (5 s).
            Some(line) => assert!(line.contains("reset"), "{line}"),
            None => assert!(!reconnected(client), "reconnected without a loss:\n{log}"),
        }
    }
    // Every client's next application connection goes through, byte for byte.
    for (n, client) in clients.iter().enumerate() {
        echo_through(client, 64 << 10, 100 + n as u64).await;
    }
    let held: Vec<usize> = instances.iter().map(connections).collect();
    assert_eq!(held.iter().sum::<usize>(), 12, "{held:?}");
    drop(dead);
}
