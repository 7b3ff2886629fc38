//! The keystore file (`<store dir>/keystore`): every data-key secret of the store, each wrapped
//! (AES-256-GCM) by a key derived from the node master key, plus a key-check value that tells a
//! wrong master key from a damaged file.
//!
//! It lives outside the RocksDB directory on purpose: destroying a bucket's key means rewriting
//! this small file without it, after which any copy of the database (a backup, a snapshot, old
//! SST files) holds ciphertext nobody can open. Every change is written atomically (temporary
//! file, fsync, rename, fsync of the directory) before the key is used or reported destroyed.
//!
//! This module owns key lifetimes only. It never sees a record, never logs a key, and never
//! writes a key unwrapped.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::aead::LessSafeKey;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};

use super::crypto::{self, DataKey, SECRET_LEN};
use crate::store::StoreError;

/// Version of the file layout below.
const KEYSTORE_FORMAT: u32 = 1;
/// What the key-check value decrypts to under the right master key.
const CHECK_PLAINTEXT: &[u8] = b"mxnode keystore check v1";
/// Associated data of the key-check value; entries use `entry:<name>`.
const CHECK_AAD: &[u8] = b"check";
/// Entry name of the standing key (API keys and settings), which never expires.
const STANDING: &str = "standing";
/// Only the owner may read the wrapped keys.
const KEYSTORE_MODE: u32 = 0o600;

/// The time buckets that have their own data keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketKind {
    /// Delivery records, one key per hour of `received_at`.
    Records,
    /// Audit events, one key per day of `time`.
    Audit,
}

impl BucketKind {
    fn entry_prefix(self) -> &'static str {
        match self {
            BucketKind::Records => "records/",
            BucketKind::Audit => "audit/",
        }
    }
}

/// The file as serialised. Base64 text in JSON: small, and an operator can see which buckets
/// still have keys without being able to read any of them.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeystoreFile {
    format: u32,
    /// [`CHECK_PLAINTEXT`] sealed with the wrapping key.
    check: String,
    /// Entry name → data-key secret sealed with the wrapping key (associated data: the name).
    keys: BTreeMap<String, String>,
}

/// The keystore in memory: wrapped secrets (to rewrite the file) and the unwrapped keys.
pub struct Keystore {
    path: PathBuf,
    /// Derived from the master key; wraps every secret in the file.
    wrap: LessSafeKey,
    /// The sealed key-check value, kept to rewrite the file unchanged.
    check: String,
    /// Entry name → sealed secret, exactly as in the file.
    wrapped: BTreeMap<String, String>,
    standing: Arc<DataKey>,
    records: BTreeMap<u64, Arc<DataKey>>,
    audit: BTreeMap<u64, Arc<DataKey>>,
}

impl Keystore {
    /// Loads the keystore at `path`, or creates it with a fresh standing key when
    /// `may_create` (there is no database yet whose keys it would have to hold).
    pub fn open(
        path: &Path,
        master_key: &[u8; SECRET_LEN],
        rng: &SystemRandom,
        may_create: bool,
    ) -> Result<Keystore, StoreError> {
        let wrap = crypto::wrapping_key(master_key);
        // A temporary file left by a crash mid-rewrite is either the new state (not yet renamed)
        // or garbage; the renamed file is the truth.
        let _ = fs::remove_file(temp_path(path));
        let text = match fs::read(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && may_create => {
                return Keystore::create(path, wrap, rng);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Corrupt(format!(
                    "the keystore {} is missing but the database exists; without it no stored \
                     value can be read (restore it, or move the database away to start empty)",
                    path.display()
                )));
            }
            Err(e) => {
                return Err(StoreError::Engine(format!(
                    "reading the keystore {}: {e}",
                    path.display()
                )));
            }
        };
        let file: KeystoreFile = serde_json::from_slice(&text).map_err(|e| {
            StoreError::Corrupt(format!(
                "the keystore {} is unreadable: {e}",
                path.display()
            ))
        })?;
        if file.format != KEYSTORE_FORMAT {
            return Err(StoreError::Corrupt(format!(
                "the keystore {} has format {}, this node reads format {KEYSTORE_FORMAT}",
                path.display(),
                file.format
            )));
        }
        let check = BASE64.decode(&file.check).unwrap_or_default();
        if crypto::open(&wrap, CHECK_AAD, &check).as_deref() != Some(CHECK_PLAINTEXT) {
            return Err(StoreError::MasterKey(format!(
                "the configured master key is not the one the store at {} was created with \
                 (the keystore's key check failed); configure the original node.master_key",
                path.parent().unwrap_or(path).display()
            )));
        }
        let mut standing = None;
        let mut records = BTreeMap::new();
        let mut audit = BTreeMap::new();
        for (name, sealed) in &file.keys {
            let key = Arc::new(unwrap_entry(&wrap, name, sealed)?);
            if name == STANDING {
                standing = Some(key);
            } else if let Some(n) = bucket_of_entry(name, BucketKind::Records) {
                records.insert(n, key);
            } else if let Some(n) = bucket_of_entry(name, BucketKind::Audit) {
                audit.insert(n, key);
            } else {
                return Err(StoreError::Corrupt(format!(
                    "the keystore has an unknown entry {name:?}"
                )));
            }
        }
        let standing = standing
            .ok_or_else(|| StoreError::Corrupt("the keystore has no standing key".to_string()))?;
        Ok(Keystore {
            path: path.to_path_buf(),
            wrap,
            check: file.check,
            wrapped: file.keys,
            standing,
            records,
            audit,
        })
    }

    fn create(path: &Path, wrap: LessSafeKey, rng: &SystemRandom) -> Result<Keystore, StoreError> {
        let check = crypto::seal(&wrap, rng, CHECK_AAD, CHECK_PLAINTEXT).ok_or_else(rng_failed)?;
        let mut keystore = Keystore {
            path: path.to_path_buf(),
            check: BASE64.encode(check),
            standing: Arc::new(DataKey::from_secret(&[0; SECRET_LEN])),
            wrap,
            wrapped: BTreeMap::new(),
            records: BTreeMap::new(),
            audit: BTreeMap::new(),
        };
        keystore.standing = keystore.add_entry(STANDING.to_string(), rng)?;
        Ok(keystore)
    }

    /// The key of API keys and settings.
    pub fn standing(&self) -> Arc<DataKey> {
        Arc::clone(&self.standing)
    }

    /// The data key of a bucket, if it exists (it does not before the bucket's first value,
    /// nor after retention destroyed it).
    pub fn bucket(&self, kind: BucketKind, bucket: u64) -> Option<Arc<DataKey>> {
        self.map(kind).get(&bucket).cloned()
    }

    /// Buckets of a kind that still have keys, oldest first.
    pub fn buckets(&self, kind: BucketKind) -> Vec<u64> {
        self.map(kind).keys().copied().collect()
    }

    /// Makes a new random data key for a bucket and writes the keystore durably before
    /// returning it, so no value is ever sealed with a key that a crash could lose.
    pub fn create_bucket(
        &mut self,
        kind: BucketKind,
        bucket: u64,
        rng: &SystemRandom,
    ) -> Result<Arc<DataKey>, StoreError> {
        if let Some(key) = self.bucket(kind, bucket) {
            return Ok(key);
        }
        let key = self.add_entry(entry_name(kind, bucket), rng)?;
        match kind {
            BucketKind::Records => self.records.insert(bucket, Arc::clone(&key)),
            BucketKind::Audit => self.audit.insert(bucket, Arc::clone(&key)),
        };
        Ok(key)
    }

    /// Destroys the keys of every bucket of `kind` before `first_kept`, rewriting the file
    /// without them. Returns how many were destroyed.
    pub fn destroy_before(&mut self, kind: BucketKind, first_kept: u64) -> Result<u64, StoreError> {
        let doomed: Vec<u64> = self
            .map(kind)
            .range(..first_kept)
            .map(|(b, _)| *b)
            .collect();
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut wrapped = self.wrapped.clone();
        for bucket in &doomed {
            wrapped.remove(&entry_name(kind, *bucket));
        }
        self.write(&wrapped)?;
        self.wrapped = wrapped;
        let map = match kind {
            BucketKind::Records => &mut self.records,
            BucketKind::Audit => &mut self.audit,
        };
        for bucket in &doomed {
            map.remove(bucket);
        }
        Ok(doomed.len() as u64)
    }

    fn map(&self, kind: BucketKind) -> &BTreeMap<u64, Arc<DataKey>> {
        match kind {
            BucketKind::Records => &self.records,
            BucketKind::Audit => &self.audit,
        }
    }

    /// Generates a secret, wraps it under `name`, persists the file with it, then returns the
    /// derived key. The secret itself is dropped here.
    fn add_entry(&mut self, name: String, rng: &SystemRandom) -> Result<Arc<DataKey>, StoreError> {
        let mut secret = [0u8; SECRET_LEN];
        rng.fill(&mut secret).map_err(|_| rng_failed())?;
        let sealed =
            crypto::seal(&self.wrap, rng, &entry_aad(&name), &secret).ok_or_else(rng_failed)?;
        let key = Arc::new(DataKey::from_secret(&secret));
        secret.fill(0);
        let mut wrapped = self.wrapped.clone();
        wrapped.insert(name, BASE64.encode(sealed));
        self.write(&wrapped)?;
        self.wrapped = wrapped;
        Ok(key)
    }

    /// Replaces the file atomically with `wrapped` as its entries.
    fn write(&self, wrapped: &BTreeMap<String, String>) -> Result<(), StoreError> {
        let file = KeystoreFile {
            format: KEYSTORE_FORMAT,
            check: self.check.clone(),
            keys: wrapped.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&file)
            .map_err(|e| StoreError::Engine(format!("encoding the keystore: {e}")))?;
        write_atomically(&self.path, &bytes).map_err(|e| {
            StoreError::Engine(format!("writing the keystore {}: {e}", self.path.display()))
        })
    }
}

fn unwrap_entry(wrap: &LessSafeKey, name: &str, sealed: &str) -> Result<DataKey, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("keystore entry {name:?} cannot be unwrapped"));
    let sealed = BASE64.decode(sealed).map_err(|_| corrupt())?;
    let secret = crypto::open(wrap, &entry_aad(name), &sealed).ok_or_else(corrupt)?;
    let mut secret: [u8; SECRET_LEN] = secret.try_into().map_err(|_| corrupt())?;
    let key = DataKey::from_secret(&secret);
    secret.fill(0);
    Ok(key)
}

fn entry_name(kind: BucketKind, bucket: u64) -> String {
    format!("{}{bucket}", kind.entry_prefix())
}

fn bucket_of_entry(name: &str, kind: BucketKind) -> Option<u64> {
    name.strip_prefix(kind.entry_prefix())?.parse().ok()
}

/// Binds each wrapped secret to its entry name, so secrets cannot be swapped between buckets.
fn entry_aad(name: &str) -> Vec<u8> {
    format!("entry:{name}").into_bytes()
}

fn rng_failed() -> StoreError {
    StoreError::Engine("the system random number generator failed".to_string())
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Write a temporary file, fsync it, rename it over `path`, fsync the directory: after a crash
/// the file is either the old or the new version, never a mix, and a destroyed key stays
/// destroyed.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let temp = temp_path(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(KEYSTORE_MODE)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_survive_reopen_and_destroyed_keys_do_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore");
        let rng = SystemRandom::new();
        let master = [7u8; SECRET_LEN];
        let mut ks = Keystore::open(&path, &master, &rng, true).expect("create");
        let k1 = ks
            .create_bucket(BucketKind::Records, 10, &rng)
            .expect("bucket 10");
        ks.create_bucket(BucketKind::Records, 11, &rng)
            .expect("bucket 11");
        ks.create_bucket(BucketKind::Audit, 3, &rng).expect("day 3");
        let sealed = k1.seal(&rng, b"aad", b"value").expect("seal");

        let ks2 = Keystore::open(&path, &master, &rng, false).expect("reopen");
        assert_eq!(ks2.buckets(BucketKind::Records), vec![10, 11]);
        assert_eq!(ks2.buckets(BucketKind::Audit), vec![3]);
        let k1_again = ks2.bucket(BucketKind::Records, 10).expect("bucket 10 kept");
        assert_eq!(
            k1_again.open(b"aad", &sealed).as_deref(),
            Some(&b"value"[..])
        );

        assert_eq!(
            ks.destroy_before(BucketKind::Records, 11).expect("destroy"),
            1
        );
        let ks3 = Keystore::open(&path, &master, &rng, false).expect("reopen");
        assert_eq!(ks3.buckets(BucketKind::Records), vec![11]);
        assert!(ks3.bucket(BucketKind::Records, 10).is_none());
    }

    #[test]
    fn wrong_master_key_is_a_master_key_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore");
        let rng = SystemRandom::new();
        Keystore::open(&path, &[1; SECRET_LEN], &rng, true).expect("create");
        match Keystore::open(&path, &[2; SECRET_LEN], &rng, false) {
            Err(StoreError::MasterKey(message)) => assert!(message.contains("master key")),
            Err(other) => panic!("expected a master key error, got {other}"),
            Ok(_) => panic!("a wrong master key was accepted"),
        }
    }

    #[test]
    fn swapped_entries_do_not_unwrap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keystore");
        let rng = SystemRandom::new();
        let master = [1; SECRET_LEN];
        let mut ks = Keystore::open(&path, &master, &rng, true).expect("create");
        ks.create_bucket(BucketKind::Records, 1, &rng)
            .expect("bucket");
        let mut file: KeystoreFile =
            serde_json::from_slice(&fs::read(&path).expect("read")).expect("parse");
        let standing = file.keys["standing"].clone();
        file.keys.insert("records/1".to_string(), standing);
        fs::write(&path, serde_json::to_vec(&file).expect("encode")).expect("write");
        assert!(matches!(
            Keystore::open(&path, &master, &rng, false),
            Err(StoreError::Corrupt(_))
        ));
    }
}
