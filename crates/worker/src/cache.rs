//! The on-disk cache of compiled components, keyed by content hash and engine configuration.
//!
//! One file per component: `<sha256 of the wasm>-<engine tag>.cwasm`, where the engine tag is a
//! digest of `Engine::precompile_compatibility_hash` (wasmtime version, target, compiler
//! settings), so artifacts of differently configured engines never collide. A file holds a
//! header, the SHA-256 of the artifact, and the artifact itself (`Component::serialize`
//! output). It is written to a temporary file and renamed into place, so a reader never sees a
//! partial file; its digest is checked before the artifact is handed to wasmtime, so a
//! truncated or corrupted file is recompiled rather than trusted.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::Engine;

const HEADER: &[u8; 16] = b"TURNPIKE-CWASM1\n";
const DIGEST_LEN: usize = 32;

/// Lowercase hex of the SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Feeds `Hash` output into SHA-256, for a digest that is stable across processes.
struct Sha256Hasher(Sha256);

impl Hasher for Sha256Hasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        unreachable!("only the SHA-256 digest is used")
    }
}

/// What a cache lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Component),
    Miss,
    /// A file was there but could not be used (corrupt, or from an incompatible engine); the
    /// caller recompiles and overwrites it.
    Unusable(String),
}

#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
    temp_counter: AtomicU64,
}

impl ArtifactCache {
    pub fn new(dir: &Path, engine: &Engine) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut hasher = Sha256Hasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_tag = hex(&hasher.0.finalize()[..8]);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_tag,
            temp_counter: AtomicU64::new(0),
        })
    }

    /// The file holding the artifact of the component whose wasm hashes to `key`.
    pub fn path(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}-{}.cwasm", self.engine_tag))
    }

    pub fn lookup(&self, engine: &Engine, key: &str) -> io::Result<Lookup> {
        let path = self.path(key);
        let file = match fs::read(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Lookup::Miss),
            Err(e) => return Err(e),
        };
        let Some(rest) = file.strip_prefix(HEADER.as_slice()) else {
            return Ok(Lookup::Unusable("bad header".into()));
        };
        if rest.len() < DIGEST_LEN {
            return Ok(Lookup::Unusable("truncated".into()));
        }
        let (digest, artifact) = rest.split_at(DIGEST_LEN);
        if Sha256::digest(artifact).as_slice() != digest {
            return Ok(Lookup::Unusable("digest mismatch".into()));
        }
        match deserialize_verified(engine, artifact) {
            Ok(component) => Ok(Lookup::Hit(component)),
            Err(e) => Ok(Lookup::Unusable(format!("{:#}", e))),
        }
    }

    /// Writes an artifact atomically (temporary file, then rename).
    pub fn store(&self, key: &str, artifact: &[u8]) -> io::Result<()> {
        let path = self.path(key);
        let n = self.temp_counter.fetch_add(1, Ordering::Relaxed);
        let temp = self
            .dir
            .join(format!(".{key}.{}.{n}.tmp", std::process::id()));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create(&temp)?;
            f.write_all(HEADER)?;
            f.write_all(&Sha256::digest(artifact))?;
            f.write_all(artifact)?;
            f.sync_all()?;
            fs::rename(&temp, &path)
        };
        let result = write();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }
}

/// The one unsafe operation of the crate: turning cached bytes back into executable code.
#[allow(unsafe_code)]
fn deserialize_verified(engine: &Engine, artifact: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: `Component::deserialize` trusts its input to be an artifact that wasmtime itself
    // produced, since it maps it as executable code. These bytes are: the cache directory is
    // written only by `ArtifactCache::store` with the output of `Component::serialize` from an
    // engine with the same configuration (the file name carries the engine's compatibility
    // digest, and wasmtime re-checks the version and settings recorded in the artifact), files
    // appear only through an atomic rename, and the SHA-256 stored beside the artifact was
    // checked just above, so a truncated or corrupted file never gets here. The cache directory
    // must not be writable by anyone the worker does not trust (see `RuntimeConfig::cache_dir`).
    unsafe { Component::deserialize(engine, artifact) }
}
