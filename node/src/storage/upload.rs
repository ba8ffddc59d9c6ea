//! What XEP-0363 file upload keeps in the replicated store: each file's
//! record, each user's files (the quota), the shared token key and where
//! each node's upload listener is. The files themselves are on the disk of
//! the node named in their record (`crate::http::upload`).

use super::{Storage, de, ser, user_key, user_prefix};
use serde::{Deserialize, Serialize};
use starling_cluster::{Op, OpResult, StoreError};

/// Slot id -> [`FileMeta`].
pub const FILES: &str = "upload_file";
/// `bare \0 slot id` -> size (8 bytes, big-endian): what each user keeps.
pub const USER_FILES: &str = "user_upload";
/// `secret` -> the token key; `dialback` -> the S2S dialback secret
/// (XEP-0185); `node \0 id` -> [`NodeListener`].
pub const META: &str = "upload_meta";

/// A stored file.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FileMeta {
    pub owner: String,
    pub filename: String,
    pub size: u64,
    pub content_type: String,
    /// Unix seconds of the upload.
    pub created: i64,
    /// The node whose disk holds it.
    pub node: u64,
    /// Unique per PUT, so two racing PUTs of one slot never write equal
    /// records (an equal insert counts as done).
    pub upload: String,
}

/// Where a node's upload listener is, for the others to fetch from.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeListener {
    pub url: String,
    /// SHA-256 of the certificates it presents (hex), pinned by the
    /// fetching node; empty for plain HTTP.
    pub pins: Vec<String>,
}

fn node_key(id: u64) -> Vec<u8> {
    format!("node\0{id}").into_bytes()
}

impl Storage {
    /// The shared token key; made (random, 32 bytes) by the first node
    /// that needs it. Every node gets the same one.
    pub async fn upload_secret(&self) -> Result<Vec<u8>, StoreError> {
        self.shared_secret(b"secret").await
    }

    /// The S2S dialback secret (XEP-0185): every node computes and checks
    /// the same keys, so any node answers for another's link.
    pub async fn dialback_secret(&self) -> Result<Vec<u8>, StoreError> {
        self.shared_secret(b"dialback").await
    }

    /// A random 32-byte secret under `key`, made by the first node that
    /// needs it; every node gets the same one.
    async fn shared_secret(&self, key: &[u8]) -> Result<Vec<u8>, StoreError> {
        let store = &self.store;
        if let Some(k) = store.get(META, key)? {
            return Ok(k);
        }
        let fresh: [u8; 32] = rand::random();
        let r = store
            .write(vec![Op::Insert {
                space: META.into(),
                key: key.to_vec(),
                value: fresh.to_vec(),
            }])
            .await?;
        if r.first() == Some(&OpResult::Done) {
            return Ok(fresh.to_vec());
        }
        // Another node made it first; its write is applied here by now.
        store.read_barrier().await?;
        store
            .get(META, key)?
            .ok_or_else(|| StoreError::Unavailable("shared secret vanished".into()))
    }

    /// A stored file's record.
    pub fn upload_file(&self, slot: &str) -> Result<Option<FileMeta>, StoreError> {
        self.store
            .get(FILES, slot.as_bytes())?
            .map(|v| de(&v))
            .transpose()
    }

    /// Every stored file's record (for the expiry pass).
    pub fn upload_files(&self) -> Result<Vec<(String, FileMeta)>, StoreError> {
        Ok(self
            .store
            .scan_prefix(FILES, b"")?
            .into_iter()
            .filter_map(|(k, v)| Some((String::from_utf8(k).ok()?, de(&v).ok()?)))
            .collect())
    }

    /// The slot ids of `bare`'s files and their sizes.
    pub fn upload_usage(&self, bare: &str) -> Result<Vec<(String, u64)>, StoreError> {
        let prefix = user_prefix(bare);
        Ok(self
            .store
            .scan_prefix(USER_FILES, &prefix)?
            .into_iter()
            .filter_map(|(k, v)| {
                let slot = String::from_utf8(k[prefix.len()..].to_vec()).ok()?;
                Some((slot, u64::from_be_bytes(v.try_into().ok()?)))
            })
            .collect())
    }

    /// Records a file and counts it in its owner's quota, in one write;
    /// `Ok(false)` when the slot already has a file.
    pub async fn add_upload(&self, slot: &str, meta: &FileMeta) -> Result<bool, StoreError> {
        let r = self
            .store
            .write(vec![
                Op::Insert {
                    space: FILES.into(),
                    key: slot.as_bytes().to_vec(),
                    value: ser(meta),
                },
                Op::Put {
                    space: USER_FILES.into(),
                    key: user_key(&meta.owner, slot),
                    value: meta.size.to_be_bytes().to_vec(),
                },
            ])
            .await?;
        Ok(r.first() == Some(&OpResult::Done))
    }

    /// Drops a file's record and its place in the owner's quota.
    pub async fn remove_upload(&self, slot: &str, owner: &str) -> Result<(), StoreError> {
        self.store
            .write(vec![
                Op::Delete {
                    space: FILES.into(),
                    key: slot.as_bytes().to_vec(),
                },
                Op::Delete {
                    space: USER_FILES.into(),
                    key: user_key(owner, slot),
                },
            ])
            .await
            .map(drop)
    }

    /// Publishes where this node's upload listener is.
    pub async fn put_upload_listener(&self, me: &NodeListener) -> Result<(), StoreError> {
        self.store
            .write(vec![Op::Put {
                space: META.into(),
                key: node_key(self.store.node_id()),
                value: ser(me),
            }])
            .await
            .map(drop)
    }

    /// Publishes where this node's BOSH listener is (XEP-0206), for the
    /// others to forward a session's requests to.
    pub async fn put_bosh_listener(&self, me: &NodeListener) -> Result<(), StoreError> {
        self.store
            .write(vec![Op::Put {
                space: META.into(),
                key: format!("bosh\0{}", self.store.node_id()).into_bytes(),
                value: ser(me),
            }])
            .await
            .map(drop)
    }

    /// Where node `id`'s BOSH listener is, if it published it.
    pub fn bosh_listener(&self, id: u64) -> Result<Option<NodeListener>, StoreError> {
        self.store
            .get(META, format!("bosh\0{id}").as_bytes())?
            .map(|v| de(&v))
            .transpose()
    }

    /// Where node `id`'s upload listener is, if it published it.
    pub fn upload_listener(&self, id: u64) -> Result<Option<NodeListener>, StoreError> {
        self.store
            .get(META, &node_key(id))?
            .map(|v| de(&v))
            .transpose()
    }
}
