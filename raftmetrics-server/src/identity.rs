//! Who a worker is and where others reach it, when the operator does not say.
//!
//! Containers started by `docker compose up --scale worker=N` share one configuration, so a
//! worker can start without `NODE_ID` and with `ADVERTISE_HOST=auto`:
//! - its id is then drawn at random on first start and kept in `<data-dir>/node-id`, so a
//!   restart with the same volume is the same node (raft membership is by id);
//! - its advertised host is the address its own hostname resolves to, which in a container
//!   is the container's address on its network.
//!
//! An id given explicitly is also written to `node-id` on first start, and a later start with
//! a different id on the same data directory is refused: one directory, one node.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::error::ServerError;
use crate::rpc::MAX_WORKER_ID;

/// The file in a worker's data directory that holds its id.
pub const NODE_ID_FILE: &str = "node-id";
/// The `--advertise-host` value that asks for the address of this machine's hostname.
pub const AUTO_ADVERTISE_HOST: &str = "auto";

/// The worker's id: `configured` checked against `<data_dir>/node-id`, or the id kept there,
/// or a new random one, which is then kept there.
pub fn worker_id(configured: Option<u64>, data_dir: &Path) -> Result<u64, ServerError> {
    let path = data_dir.join(NODE_ID_FILE);
    let kept = read_id(&path)?;
    let id = match (configured, kept) {
        (Some(c), Some(k)) if c != k => {
            return Err(ServerError::Config(format!(
                "NODE_ID {c} does not match the id {k} kept in {}: this data directory \
                 belongs to another node",
                path.display()
            )));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => random_id()?,
    };
    if !(1..=MAX_WORKER_ID).contains(&id) {
        return Err(ServerError::Config(format!(
            "worker id must be in 1..={MAX_WORKER_ID}, not {id}"
        )));
    }
    if kept.is_none() {
        write_atomic(&path, format!("{id}\n").as_bytes(), 0o644)
            .map_err(ServerError::io(format!("write {}", path.display())))?;
    }
    Ok(id)
}

fn read_id(path: &Path) -> Result<Option<u64>, ServerError> {
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(f) => f
            .take(64)
            .read_to_string(&mut text)
            .map_err(ServerError::io(format!("read {}", path.display())))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ServerError::io(format!("read {}", path.display()))(e)),
    };
    text.trim().parse().map(Some).map_err(|_| {
        ServerError::Config(format!(
            "{} does not hold a node id (a decimal number)",
            path.display()
        ))
    })
}

/// A random id in `1..=MAX_WORKER_ID`.
fn random_id() -> Result<u64, ServerError> {
    let mut bytes = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(ServerError::io("read random bytes from /dev/urandom"))?;
    Ok(u64::from_le_bytes(bytes) % MAX_WORKER_ID + 1)
}

/// The host other nodes use to reach this one: `configured`, or for
/// [`AUTO_ADVERTISE_HOST`] the first address (IPv4 first, loopback last) that this machine's
/// hostname resolves to.
pub async fn advertise_host(configured: &str) -> Result<String, ServerError> {
    if configured != AUTO_ADVERTISE_HOST {
        return Ok(configured.to_string());
    }
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(ServerError::io("read this machine's hostname"))?;
    let hostname = hostname.trim();
    let addrs: Vec<IpAddr> = tokio::net::lookup_host((hostname, 0))
        .await
        .map_err(ServerError::io(format!(
            "resolve this machine's hostname {hostname}"
        )))?
        .map(|a| a.ip())
        .collect();
    best_address(&addrs).map(|ip| ip.to_string()).ok_or_else(|| {
        ServerError::Config(format!(
            "ADVERTISE_HOST=auto: hostname {hostname} resolves to no address; set ADVERTISE_HOST"
        ))
    })
}

/// IPv4 before IPv6, loopback only when nothing else is there.
fn best_address(addrs: &[IpAddr]) -> Option<IpAddr> {
    addrs
        .iter()
        .copied()
        .min_by_key(|ip| (ip.is_loopback(), !ip.is_ipv4()))
}

/// Writes `contents` to `path` through a temporary file, synced and renamed, so a reader
/// sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(contents).and_then(|()| file.sync_all())?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_id_is_kept_and_a_different_one_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = worker_id(None, dir.path()).expect("new id");
        assert!((1..=MAX_WORKER_ID).contains(&id));
        assert_eq!(worker_id(None, dir.path()).expect("kept"), id);
        assert_eq!(worker_id(Some(id), dir.path()).expect("same"), id);
        let other = if id == 1 { 2 } else { id - 1 };
        let err = worker_id(Some(other), dir.path()).expect_err("another node's directory");
        assert!(err.to_string().contains("belongs to another node"), "{err}");
    }

    #[test]
    fn an_explicit_id_is_written_on_first_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(worker_id(Some(7), dir.path()).expect("id"), 7);
        let text = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).expect("file");
        assert_eq!(text, "7\n");
        assert!(worker_id(Some(0), tempfile::tempdir().unwrap().path()).is_err());
    }

    #[test]
    fn a_garbled_id_file_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(NODE_ID_FILE), "seven").expect("write");
        assert!(worker_id(None, dir.path()).is_err());
    }

    #[test]
    fn the_advertised_address_prefers_ipv4_and_avoids_loopback() {
        let v4: IpAddr = "172.18.0.3".parse().unwrap();
        let v6: IpAddr = "fd00::3".parse().unwrap();
        let lo: IpAddr = "127.0.1.1".parse().unwrap();
        assert_eq!(best_address(&[lo, v6, v4]), Some(v4));
        assert_eq!(best_address(&[lo, v6]), Some(v6));
        assert_eq!(best_address(&[lo]), Some(lo));
        assert_eq!(best_address(&[]), None);
    }

    #[tokio::test]
    async fn an_explicit_advertised_host_is_kept() {
        assert_eq!(advertise_host("worker-1").await.unwrap(), "worker-1");
        assert!(
            !advertise_host(AUTO_ADVERTISE_HOST)
                .await
                .unwrap()
                .is_empty()
        );
    }
}
