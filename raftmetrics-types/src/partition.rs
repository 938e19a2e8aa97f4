//! Which partition a key belongs to.
//!
//! A cluster has a fixed number `P` of virtual partitions, chosen when it is created. The
//! default [`HashPartitioner`] maps a key to `stable_hash(key) mod P`, where
//! [`stable_hash`] is XXH3-64 (seed 0) of the key's UTF-8 bytes: a published, versioned
//! algorithm, so the mapping is the same on every platform, build and release. The test
//! vectors below pin it; a change that moves any key to another partition fails them.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Index of a virtual partition, `0..P`.
pub type PartitionId = u32;

/// Most partitions a cluster may have.
pub const MAX_PARTITIONS: u32 = 65_536;

/// Decides the partition of a key.
pub trait Partitioner: Send + Sync {
    /// The number of partitions `P`.
    fn partition_count(&self) -> u32;
    /// The partition of `key`, in `0..P`; the same key always maps to the same partition.
    fn partition_of(&self, key: &str) -> PartitionId;
}

/// XXH3-64 with seed 0 over the UTF-8 bytes of `key`.
pub fn stable_hash(key: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key.as_bytes())
}

/// `stable_hash(key) mod P`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashPartitioner {
    partitions: u32,
}

impl HashPartitioner {
    /// A partitioner over `partitions` partitions (1 to [`MAX_PARTITIONS`]).
    pub fn new(partitions: u32) -> Result<Self> {
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(Error::field(
                "partitions",
                format!("must be between 1 and {MAX_PARTITIONS}"),
            ));
        }
        Ok(HashPartitioner { partitions })
    }
}

impl Partitioner for HashPartitioner {
    fn partition_count(&self) -> u32 {
        self.partitions
    }

    fn partition_of(&self, key: &str) -> PartitionId {
        (stable_hash(key) % u64::from(self.partitions)) as PartitionId
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pinned: these values must never change, or stored data would be looked for in the
    /// wrong partition after an upgrade.
    #[test]
    fn stable_hash_test_vectors() {
        let vectors: [(&str, u64); 5] = [
            ("", 0x2d06800538d394c2),
            ("user123", 0x6f3bae88a40b238c),
            ("cpu_usage", 0x35ef91968147920c),
            ("user456", 0x14c9bd38a5f7fc6a),
            ("héllo wörld", 0xca5aeb8da2d76864),
        ];
        for (key, hash) in vectors {
            assert_eq!(
                stable_hash(key),
                hash,
                "stable_hash({key:?}) = {:#018x}",
                stable_hash(key)
            );
        }
    }

    #[test]
    fn partition_test_vectors() {
        let p16 = HashPartitioner::new(16).unwrap();
        let p64 = HashPartitioner::new(64).unwrap();
        let vectors: [(&str, u32, u32); 4] = [
            ("user123", 12, 12),
            ("user456", 10, 42),
            ("cpu_usage", 12, 12),
            ("cpu_usage\u{1e}host\u{1f}server-1", 7, 39),
        ];
        for (key, in16, in64) in vectors {
            assert_eq!(
                (p16.partition_of(key), p64.partition_of(key)),
                (in16, in64),
                "{key:?}"
            );
        }
    }

    #[test]
    fn spreads_keys_evenly() {
        let p = HashPartitioner::new(16).unwrap();
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[p.partition_of(&format!("host-{i}")) as usize] += 1;
        }
        // Expected 1000 each; a fair hash stays well within +-15%.
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn refuses_bad_counts() {
        assert!(HashPartitioner::new(0).is_err());
        assert!(HashPartitioner::new(MAX_PARTITIONS + 1).is_err());
        assert!(HashPartitioner::new(1).is_ok());
    }
}
