//! A real cluster whose nodes live in Linux network namespaces, so that the network between
//! them can be cut for real: each control node and each worker in a namespace of its own,
//! each with a veth into one bridge in the root namespace, where the test process reaches
//! them.
//!
//! ```text
//!   test process ── rmb<pid>x<k> (10.A.B.254/24) ──┬── control 1  10.A.B.1
//!                                                   ├── worker 1   10.A.B.2
//!                                                   ├── worker i   10.A.B.(1+i)
//!                                                   ├── control j  10.A.B.(240+j)   (j = 2..=5)
//! ```
//! The nodes run the command lines `dev` would give them ([`dev::plan`]: the same flags, the
//! same cleaned environment with the secrets in `AUTH_TOKENS` and `CLUSTER_SECRET`), except
//! that each binds to and advertises its namespace's address, and every control node address
//! in `--control-host` (the workers') and `--control-peers` (the control nodes') is that
//! control node's namespace address. A cut is an iptables `DROP` rule in a node's namespace;
//! healing flushes them.
//!
//! With several control nodes ([`NetnsCluster::start_ha`]) they form one metadata group:
//! [`NetnsCluster::metadata_leader`] finds the one deciding placement, and a cut between
//! control nodes splits the group.
//!
//! Needs root and `ip`/`iptables`: [`available`] says whether this machine has them (and
//! panics when `RAFTMETRICS_REQUIRE_NETNS=1` demands them). Every name made here carries the
//! test process's pid, so parallel runs do not clash, and leftovers of processes that are
//! gone (a run killed before its cleanup) are removed when the next run starts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write as _};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

use raftmetrics_core::{HashPartitioner, PartitionId, Partitioner};
use raftmetrics_server::config::{Role, parse_from_env_and_args};
use raftmetrics_server::dev;
use serde_json::Value;

use super::{DevCluster, TOKEN, TOKEN_B, TOKEN_C};

/// Set to `1` to make a machine without network namespaces fail the tests instead of
/// skipping them.
pub const REQUIRE_VAR: &str = "RAFTMETRICS_REQUIRE_NETNS";
/// Prefix of the namespaces and of the iptables rule comments made here.
const PREFIX: &str = "rmnet";
/// Prefixes of the bridge and veth interface names (at most 15 bytes with pid and index).
const BRIDGE_PREFIX: &str = "rmb";
const VETH_PREFIX: &str = "rmv";
/// Control node 1's HTTP port; the other nodes get the ports `dev` gives them after it.
const PORT: u16 = 8080;
/// Control node `j` (2..=5) has the address `10.A.B.(CONTROL_HOST_BASE + j)`.
const CONTROL_HOST_BASE: u8 = 240;
const CLUSTER_SECRET: &str = "netns-test-cluster-secret-0123456789";

/// A node of the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// Control node 1 (the only one of a cluster made by [`NetnsCluster::start`]).
    Control,
    /// Control node `j`, for `j` of 2 and up ([`Node::control`] makes either variant).
    ControlPeer(u64),
    Worker(u64),
}

impl Node {
    /// Control node `j` (1-based).
    pub fn control(j: u64) -> Node {
        assert!(j >= 1, "control node ids start at 1");
        if j == 1 {
            Node::Control
        } else {
            Node::ControlPeer(j)
        }
    }

    /// The control node id of a control node, `None` for a worker.
    pub fn control_id(self) -> Option<u64> {
        match self {
            Node::Control => Some(1),
            Node::ControlPeer(j) => Some(j),
            Node::Worker(_) => None,
        }
    }
}

/// Which traffic a cut drops, seen from the node the cut is made on. Over TCP a one-way cut
/// lets data through only on connections already open, until the sender's window fills (the
/// other side's acknowledgements are dropped); no new connection opens either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Nothing in either direction.
    Both,
    /// The node receives nothing from the peers (what it sends still leaves).
    Inbound,
    /// The node sends nothing to the peers (what they send still arrives).
    Outbound,
}

/// Whether network namespaces can be used here. When they cannot, says so loudly on the
/// terminal (past the test harness's capture) and answers `false`, unless
/// [`REQUIRE_VAR`]`=1`, which turns that into a panic.
pub fn available() -> bool {
    static USABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(why) = USABLE.get_or_init(usable) else {
        return true;
    };
    let required = std::env::var(REQUIRE_VAR).is_ok_and(|v| v.trim() == "1");
    assert!(
        !required,
        "network namespaces are required ({REQUIRE_VAR}=1) but unusable: {why}"
    );
    let banner = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{banner}\nSKIPPED: the network partition tests need root and working `ip netns` and \
         `iptables`: {why}.\nSet {REQUIRE_VAR}=1 to make this a failure.\n{banner}\n"
    );
    false
}

fn usable() -> Result<(), String> {
    // The effective uid: the second field of `Uid:` in /proc/self/status.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Err("not running as root".into());
    }
    run("iptables", &["-w", "-S", "INPUT"]).map_err(|e| format!("`iptables -S` fails: {e}"))?;
    // A namespace of our own, with iptables working inside it.
    let probe = format!("{PREFIX}-{}-probe", std::process::id());
    run("ip", &["netns", "add", &probe]).map_err(|e| format!("`ip netns add` fails: {e}"))?;
    let inside = run(
        "ip",
        &["netns", "exec", &probe, "iptables", "-w", "-S", "INPUT"],
    );
    delete_namespace(&probe);
    inside.map_err(|e| format!("iptables in a namespace fails: {e}"))?;
    Ok(())
}

/// Runs `program args`, answering its standard output, or what went wrong.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}`: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`run`], panicking on failure (setup steps that must work).
fn must(program: &str, args: &[&str]) -> String {
    run(program, args).unwrap_or_else(|e| panic!("network setup: {e}"))
}

/// The pid a name made here carries (`rmnet-<pid>-…`, `rmb<pid>x…`, `rmv<pid>x…`).
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(&format!("{PREFIX}-"))
        .or_else(|| name.strip_prefix(BRIDGE_PREFIX))
        .or_else(|| name.strip_prefix(VETH_PREFIX))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let after = rest[digits.len()..].chars().next();
    if !matches!(after, Some('-' | 'x')) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `name` was made by a test process that is gone.
fn stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| {
        pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    })
}

/// Kills what runs in namespace `ns` and deletes it (its veth ends and rules go with it).
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = run("ip", &["netns", "delete", ns]);
}

/// Deletes the iptables rules of the root namespace's FORWARD chain whose comment names
/// `matches`.
fn delete_forward_rules(matches: impl Fn(&str) -> bool) {
    let Ok(rules) = run("iptables", &["-w", "-S", "FORWARD"]) else {
        return;
    };
    for rule in rules.lines() {
        let words: Vec<&str> = rule.split_whitespace().collect();
        let comment = words
            .windows(2)
            .find(|w| w[0] == "--comment")
            .map(|w| w[1].trim_matches('"'));
        if words.first() == Some(&"-A") && comment.is_some_and(&matches) {
            let mut args = vec!["-w", "-D"];
            args.extend(&words[1..]);
            let _ = run("iptables", &args);
        }
    }
}

/// Removes what earlier test processes that are gone left behind: their namespaces (and
/// what still runs in them), bridges, veths and FORWARD rules.
fn clean_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Ok(list) = run("ip", &["netns", "list"]) {
            for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
                if ns.starts_with(PREFIX) && stale(ns) {
                    delete_namespace(ns);
                }
            }
        }
        if let Ok(links) = run("ip", &["-o", "link", "show"]) {
            for line in links.lines() {
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                if (name.starts_with(BRIDGE_PREFIX) || name.starts_with(VETH_PREFIX)) && stale(name)
                {
                    let _ = run("ip", &["link", "delete", name]);
                }
            }
        }
        delete_forward_rules(stale);
    });
}

/// A subnet `10.A.B.0/24` that no interface or route of this machine uses yet.
fn free_subnet(k: u32) -> [u8; 2] {
    let used = format!(
        "{}{}",
        run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default(),
        run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default()
    );
    let seed = std::process::id()
        .wrapping_mul(7919)
        .wrapping_add(k * 104_729);
    (0..4096u32)
        .map(|i| {
            let v = seed.wrapping_add(i * 131) % (64 * 256);
            [64 + (v / 256) as u8, (v % 256) as u8]
        })
        .find(|[a, b]| !used.contains(&format!("10.{a}.{b}.")))
        .expect("a free 10.x.y.0/24 subnet")
}

/// A node process started in its namespace.
struct Proc {
    node: Node,
    child: Child,
}

/// The cluster and its network. Dropping it (also when a test panics) kills the nodes and
/// deletes the namespaces, veths, bridge and iptables rules.
pub struct NetnsCluster {
    /// HTTP client of control node 1 (reached through the bridge), for the writer, the set
    /// checker and the requests of [`DevCluster`].
    pub client: Arc<DevCluster>,
    pub workers: u16,
    /// How many control nodes (1, 3 or 5).
    pub controls: u16,
    /// HTTP clients of every control node, in id order (the first is [`NetnsCluster::client`]).
    control_clients: Vec<Arc<DevCluster>>,
    /// What `dev` would start: every node's ports and command line.
    specs: Vec<dev::ChildSpec>,
    pid: u32,
    k: u32,
    subnet: [u8; 2],
    procs: Mutex<Vec<Proc>>,
    /// Holds the nodes' data directories; dropped after the nodes are killed.
    dir: tempfile::TempDir,
}

impl NetnsCluster {
    /// Builds the network and starts one control node and `workers` workers with `rf`
    /// replicas of each of `partitions` partitions; waits until the cluster is healthy
    /// (every worker registered, every partition led).
    pub async fn start(workers: u16, rf: u32, partitions: u32) -> NetnsCluster {
        Self::start_ha(1, workers, rf, partitions).await
    }

    /// Like [`NetnsCluster::start`] with `controls` control nodes (1, 3 or 5) forming one
    /// metadata group; with more than one, also waits until every control node reports the
    /// cluster healthy and one of them decides placement.
    pub async fn start_ha(controls: u16, workers: u16, rf: u32, partitions: u32) -> NetnsCluster {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(
            (1..=5).contains(&controls),
            "1 to 5 control nodes, not {controls}"
        );
        assert!(
            u32::from(workers) < u32::from(CONTROL_HOST_BASE) - 1,
            "fewer than {} workers",
            CONTROL_HOST_BASE - 1
        );
        clean_stale();
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let subnet = free_subnet(k);
        let dir = tempfile::tempdir().expect("temp dir");
        let specs = Self::plan(&dir, controls, workers, rf, partitions);
        let control_clients: Vec<Arc<DevCluster>> = (1..=u64::from(controls))
            .map(|j| {
                let spec = specs
                    .iter()
                    .find(|s| s.kind == dev::NodeKind::Control && s.id == j)
                    .unwrap_or_else(|| panic!("dev plans no control node {j}"));
                let ip = Self::ip_in(subnet, Node::control(j));
                Arc::new(DevCluster::attach(IpAddr::V4(ip), spec.http_port, workers))
            })
            .collect();
        let cluster = NetnsCluster {
            client: Arc::clone(&control_clients[0]),
            workers,
            controls,
            control_clients,
            specs,
            pid: std::process::id(),
            k,
            subnet,
            procs: Mutex::new(Vec::new()),
            dir,
        };
        // From here on, a failure unwinds through the guard's Drop, which removes whatever
        // was made.
        cluster.build_network();
        cluster.spawn_nodes();
        cluster.wait_healthy(Duration::from_secs(90)).await;
        cluster
    }

    /// `dev`'s plan of the cluster, with its data under `dir`.
    fn plan(
        dir: &tempfile::TempDir,
        controls: u16,
        workers: u16,
        rf: u32,
        partitions: u32,
    ) -> Vec<dev::ChildSpec> {
        let exe = env!("CARGO_BIN_EXE_raftmetrics-server");
        let data = dir.path().join("cluster");
        let mut dev_args = vec![
            "raftmetrics-server".to_string(),
            "dev".into(),
            format!("--workers={workers}"),
            format!("--replication-factor={rf}"),
            format!("--partitions={partitions}"),
            format!("--port={PORT}"),
            format!("--data-dir={}", data.display()),
        ];
        if controls > 1 {
            dev_args.push(format!("--control-nodes={controls}"));
        }
        let cli = parse_from_env_and_args(dev_args, &|_| None).expect("dev arguments");
        let Role::Dev(args) = cli.role else {
            unreachable!("parsed as dev")
        };
        dev::plan(&args, std::path::Path::new(exe)).expect("dev plan")
    }

    /// Every node: the control nodes in id order, then the workers.
    pub fn nodes(&self) -> Vec<Node> {
        self.control_nodes()
            .into_iter()
            .chain((1..=u64::from(self.workers)).map(Node::Worker))
            .collect()
    }

    /// Every control node, in id order.
    pub fn control_nodes(&self) -> Vec<Node> {
        (1..=u64::from(self.controls)).map(Node::control).collect()
    }

    /// Every control node but control node `j`.
    pub fn other_controls(&self, j: u64) -> Vec<Node> {
        (1..=u64::from(self.controls))
            .filter(|&c| c != j)
            .map(Node::control)
            .collect()
    }

    /// The namespace of `node`.
    pub fn namespace(&self, node: Node) -> String {
        let who = match (node.control_id(), node) {
            (Some(1), _) => "control".to_string(),
            (Some(j), _) => format!("control-{j}"),
            (None, Node::Worker(i)) => format!("w{i}"),
            (None, _) => unreachable!("a worker"),
        };
        format!("{PREFIX}-{}-{}-{who}", self.pid, self.k)
    }

    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}x{}", self.pid, self.k)
    }

    fn veth(&self, node: Node) -> String {
        let which = match (node.control_id(), node) {
            (Some(1), _) => "n0".to_string(),
            (Some(j), _) => format!("c{j}"),
            (None, Node::Worker(i)) => format!("n{i}"),
            (None, _) => unreachable!("a worker"),
        };
        format!("{VETH_PREFIX}{}x{}{which}", self.pid, self.k)
    }

    fn comment(&self) -> String {
        format!("{PREFIX}-{}-{}", self.pid, self.k)
    }

    /// The address of `node` (its namespace's).
    pub fn ip(&self, node: Node) -> Ipv4Addr {
        Self::ip_in(self.subnet, node)
    }

    fn ip_in(subnet: [u8; 2], node: Node) -> Ipv4Addr {
        let last = match (node.control_id(), node) {
            (Some(1), _) => 1,
            (Some(j), _) => CONTROL_HOST_BASE + u8::try_from(j).expect("control node id"),
            (None, Node::Worker(i)) => {
                let i = u8::try_from(i).expect("worker id");
                assert!(i < CONTROL_HOST_BASE - 1, "worker id {i} too high");
                1 + i
            }
            (None, _) => unreachable!("a worker"),
        };
        Ipv4Addr::new(10, subnet[0], subnet[1], last)
    }

    /// What `dev` planned for `node`.
    fn spec(&self, node: Node) -> &dev::ChildSpec {
        let (kind, id) = match (node.control_id(), node) {
            (Some(j), _) => (dev::NodeKind::Control, j),
            (None, Node::Worker(i)) => (dev::NodeKind::Worker, i),
            (None, _) => unreachable!("a worker"),
        };
        self.specs
            .iter()
            .find(|s| s.kind == kind && s.id == id)
            .unwrap_or_else(|| panic!("no {node:?} in this cluster"))
    }

    /// The URL of `path` on worker `id`'s HTTP API.
    pub fn worker_url(&self, id: u64, path: &str) -> String {
        let port = self.spec(Node::Worker(id)).http_port;
        format!("http://{}:{port}{path}", self.ip(Node::Worker(id)))
    }

    /// The URL of `path` on control node `j`'s HTTP API.
    pub fn control_url(&self, j: u64, path: &str) -> String {
        self.control_client(j).url(path)
    }

    /// An HTTP client of control node `j` (the writer, the set checker and the requests of
    /// [`DevCluster`] through that node).
    pub fn control_client(&self, j: u64) -> Arc<DevCluster> {
        let i = usize::try_from(j).expect("control node id");
        assert!(
            (1..=self.control_clients.len()).contains(&i),
            "no control node {j}"
        );
        Arc::clone(&self.control_clients[i - 1])
    }

    /// Control node `j`'s `/health`, when it answers 200.
    pub async fn control_health(&self, j: u64) -> Option<Value> {
        match self.get(&self.control_url(j, "/health")).await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The control node deciding placement now: asks every control node's `/health` and
    /// answers the one whose `control_plane.deciding` is true, when exactly one says so.
    pub async fn metadata_leader(&self) -> Option<u64> {
        self.deciding(&(1..=u64::from(self.controls)).collect::<Vec<_>>())
            .await
    }

    /// Of the control nodes `among`, the one whose `/health` says it decides placement, when
    /// exactly one of them says so.
    pub async fn deciding(&self, among: &[u64]) -> Option<u64> {
        let mut deciding = Vec::new();
        for &j in among {
            if let Some(body) = self.control_health(j).await
                && body["control_plane"]["deciding"] == true
            {
                deciding.push(j);
            }
        }
        match deciding[..] {
            [j] => Some(j),
            _ => None,
        }
    }

    /// Waits up to `limit` until exactly one of the control nodes `among` decides placement
    /// and answers it.
    pub async fn wait_deciding(&self, among: &[u64], limit: Duration) -> Option<u64> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(j) = self.deciding(among).await {
                return Some(j);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    fn build_network(&self) {
        let bridge = self.bridge();
        let gateway = format!("10.{}.{}.254/24", self.subnet[0], self.subnet[1]);
        must("ip", &["link", "add", &bridge, "type", "bridge"]);
        must("ip", &["addr", "add", &gateway, "dev", &bridge]);
        must("ip", &["link", "set", &bridge, "up"]);
        // With br_netfilter loaded, bridged frames pass the root namespace's FORWARD chain,
        // whose policy may be DROP (Docker sets it): let this bridge's traffic through.
        let comment = self.comment();
        must(
            "iptables",
            &[
                "-w",
                "-I",
                "FORWARD",
                "-i",
                &bridge,
                "-o",
                &bridge,
                "-m",
                "comment",
                "--comment",
                &comment,
                "-j",
                "ACCEPT",
            ],
        );
        for node in self.nodes() {
            let ns = self.namespace(node);
            let veth = self.veth(node);
            let addr = format!("{}/24", self.ip(node));
            must("ip", &["netns", "add", &ns]);
            must(
                "ip",
                &[
                    "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            );
            must("ip", &["link", "set", &veth, "master", &bridge]);
            must("ip", &["link", "set", &veth, "up"]);
            must("ip", &["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
            must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        }
    }

    /// The control node whose node-to-node port is `port`, in `dev`'s plan.
    fn control_by_internal_port(&self, port: u16) -> Option<Node> {
        self.specs
            .iter()
            .find(|s| s.kind == dev::NodeKind::Control && s.internal_port == port)
            .map(|s| Node::control(s.id))
    }

    /// `list` (`host:port,host:port,…`, control nodes' node-to-node addresses) with each
    /// address replaced by the namespace address of the control node listening on its port.
    fn control_addresses(&self, list: &str) -> String {
        list.split(',')
            .map(|addr| {
                let port: u16 = addr
                    .trim()
                    .rsplit_once(':')
                    .and_then(|(_, p)| p.parse().ok())
                    .unwrap_or_else(|| panic!("no port in control node address {addr:?}"));
                let node = self
                    .control_by_internal_port(port)
                    .unwrap_or_else(|| panic!("no control node listens on port {port} ({list})"));
                format!("{}:{port}", self.ip(node))
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `dev`'s command line of `spec` (run as `node`), with its loopback addresses replaced
    /// by the namespaces'.
    fn command_line(&self, spec: &dev::ChildSpec, node: Node) -> Vec<String> {
        let ip = self.ip(node);
        spec.args
            .iter()
            .map(|a| {
                let a = a.to_str().expect("UTF-8 argument");
                let replaced = if a.starts_with("--bind-host=") {
                    format!("--bind-host={ip}")
                } else if a.starts_with("--advertise-host=") {
                    format!("--advertise-host={ip}")
                } else if let Some(list) = a.strip_prefix("--control-host=") {
                    format!("--control-host={}", self.control_addresses(list))
                } else if let Some(list) = a.strip_prefix("--control-peers=") {
                    format!("--control-peers={}", self.control_addresses(list))
                } else {
                    a.to_string()
                };
                assert!(
                    !replaced.contains("127.0.0.1") && !replaced.contains("localhost"),
                    "a loopback address in a node's command line: {replaced}"
                );
                replaced
            })
            .collect()
    }

    /// Starts every node as `dev` would, each in its namespace.
    fn spawn_nodes(&self) {
        let log_filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        for spec in &self.specs {
            let node = match spec.kind {
                dev::NodeKind::Control => Node::control(spec.id),
                dev::NodeKind::Worker => Node::Worker(spec.id),
            };
            let args = self.command_line(spec, node);
            let ns = self.namespace(node);
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", &ns])
                .arg(&spec.program)
                .args(&args);
            for var in dev::removed_env_vars() {
                cmd.env_remove(var);
            }
            cmd.env("AUTH_TOKENS", format!("{TOKEN},{TOKEN_B},{TOKEN_C}"))
                .env("CLUSTER_SECRET", CLUSTER_SECRET)
                .env("RUST_LOG", &log_filter)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            // `ip netns exec` execs the program: the child's pid is the node's.
            let mut child = cmd.spawn().expect("start a node with ip netns exec");
            if let Some(err) = child.stderr.take() {
                let prefix = format!("[{} {}] ", self.comment(), spec.name());
                // Through the harness's capture: shown when the test fails.
                std::thread::spawn(move || {
                    for line in BufReader::new(err).lines().map_while(Result::ok) {
                        eprintln!("{prefix}{line}");
                    }
                });
            }
            self.procs.lock().unwrap().push(Proc { node, child });
        }
    }

    /// Waits until control node 1 reports the cluster healthy; with several control nodes,
    /// until every one does and one of them decides placement.
    async fn wait_healthy(&self, limit: Duration) {
        let start = Instant::now();
        let mut last = Value::Null;
        while start.elapsed() < limit {
            if let Some(exited) = self.procs.lock().unwrap().iter_mut().find_map(|p| {
                p.child
                    .try_wait()
                    .ok()
                    .flatten()
                    .map(|status| (p.node, status))
            }) {
                panic!("{:?} exited during startup: {}", exited.0, exited.1);
            }
            let mut all_healthy = true;
            let mut deciding = 0;
            for j in 1..=u64::from(self.controls) {
                match self.get(&self.control_url(j, "/health")).await {
                    Some((200, body)) => {
                        if body["control_plane"]["deciding"] == true {
                            deciding += 1;
                        }
                        if body["status"] != "healthy" {
                            all_healthy = false;
                            last = serde_json::json!({"control node": j, "health": body});
                        }
                    }
                    other => {
                        all_healthy = false;
                        last =
                            serde_json::json!({"control node": j, "answer": format!("{other:?}")});
                    }
                }
                if !all_healthy {
                    break;
                }
            }
            if all_healthy && (self.controls == 1 || deciding == 1) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("cluster not healthy after {limit:?}; last health: {last}");
    }

    /// GET `url` with a short timeout: status and JSON body, `None` when it did not answer.
    pub async fn get(&self, url: &str) -> Option<(u16, Value)> {
        self.client
            .try_request(reqwest::Method::GET, url, Duration::from_secs(3))
            .await
            .ok()
    }

    /// Drops the traffic between `node` and each of `peers`, as `how` says (rules in `node`'s
    /// namespace).
    pub fn cut(&self, node: Node, peers: &[Node], how: Cut) {
        let ns = self.namespace(node);
        for &peer in peers {
            let ip = self.ip(peer).to_string();
            let mut rules = Vec::new();
            if how != Cut::Outbound {
                rules.push(["INPUT", "-s"]);
            }
            if how != Cut::Inbound {
                rules.push(["OUTPUT", "-d"]);
            }
            for [chain, side] in rules {
                must(
                    "ip",
                    &[
                        "netns", "exec", &ns, "iptables", "-w", "-A", chain, side, &ip, "-j",
                        "DROP",
                    ],
                );
            }
        }
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for node in self.nodes() {
            let ns = self.namespace(node);
            for chain in ["INPUT", "OUTPUT"] {
                must("ip", &["netns", "exec", &ns, "iptables", "-w", "-F", chain]);
            }
        }
    }

    /// Every worker but `id`.
    pub fn others(&self, id: u64) -> Vec<Node> {
        (1..=u64::from(self.workers))
            .filter(|&w| w != id)
            .map(Node::Worker)
            .collect()
    }

    /// The partition of `key`.
    pub fn partition_of(&self, key: &str, partitions: u32) -> PartitionId {
        HashPartitioner::new(partitions)
            .expect("partitions")
            .partition_of(key)
    }

    /// What each worker's `/metrics` says it leads, by partition: the workers claiming it
    /// with their terms (two claims while a cut-off leader has not stepped down yet).
    /// Workers that do not answer are left out.
    pub async fn leader_claims(&self) -> BTreeMap<PartitionId, Vec<(u64, u64)>> {
        let mut claims: BTreeMap<PartitionId, Vec<(u64, u64)>> = BTreeMap::new();
        for w in 1..=u64::from(self.workers) {
            let Ok(resp) = self
                .client
                .http
                .get(self.worker_url(w, "/metrics"))
                .bearer_auth(TOKEN)
                .timeout(Duration::from_secs(3))
                .send()
                .await
            else {
                continue;
            };
            let Ok(text) = resp.text().await else {
                continue;
            };
            let gauge = |name: &str| -> BTreeMap<PartitionId, u64> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(name)?.strip_prefix("{partition=\""))
                    .filter_map(|l| {
                        let (p, v) = l.split_once("\"} ")?;
                        Some((p.parse().ok()?, v.trim().parse().ok()?))
                    })
                    .collect()
            };
            let terms = gauge("raftmetrics_raft_term");
            for (p, leads) in gauge("raftmetrics_raft_leader") {
                if leads == 1 {
                    let term = terms.get(&p).copied().unwrap_or(0);
                    claims.entry(p).or_default().push((w, term));
                }
            }
        }
        claims
    }

    /// The leader of each partition that has one: of the workers claiming it, the one with
    /// the highest term.
    pub async fn leaders(&self) -> BTreeMap<PartitionId, u64> {
        self.leader_claims()
            .await
            .into_iter()
            .filter_map(|(p, claims)| {
                let (w, _) = claims.into_iter().max_by_key(|&(_, term)| term)?;
                Some((p, w))
            })
            .collect()
    }

    /// The leader of `partition` (see [`NetnsCluster::leaders`]).
    pub async fn leader(&self, partition: PartitionId) -> Option<u64> {
        self.leaders().await.remove(&partition)
    }

    /// Waits until `partition` is led by a worker other than `not`, with no other claim left
    /// (the old leader stepped down); answers it.
    pub async fn wait_new_leader(
        &self,
        partition: PartitionId,
        not: u64,
        limit: Duration,
    ) -> Option<u64> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(claims) = self.leader_claims().await.remove(&partition)
                && let [(w, _)] = claims[..]
                && w != not
            {
                return Some(w);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    /// Control node 1's count of live workers (`/health`), if it answers.
    pub async fn healthy_workers(&self) -> Option<u64> {
        let (_, doc) = self.get(&self.client.url("/health")).await?;
        doc["worker_nodes"]["healthy"].as_u64()
    }

    /// Every worker's `/compute` URL, at its namespace address.
    pub fn compute_urls(&self) -> Vec<String> {
        (1..=u64::from(self.workers))
            .map(|id| self.worker_url(id, "/compute"))
            .collect()
    }
}

impl Drop for NetnsCluster {
    fn drop(&mut self) {
        let mut procs = self.procs.lock().unwrap_or_else(|p| p.into_inner());
        for p in procs.iter_mut() {
            let _ = p.child.kill();
        }
        for p in procs.iter_mut() {
            let _ = p.child.wait();
        }
        drop(procs);
        for node in self.nodes() {
            // Also kills anything else still running in it.
            delete_namespace(&self.namespace(node));
            let _ = run("ip", &["link", "delete", &self.veth(node)]);
        }
        let _ = run("ip", &["link", "delete", &self.bridge()]);
        let comment = self.comment();
        delete_forward_rules(|c| c == comment);
    }
}
