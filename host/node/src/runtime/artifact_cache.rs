//! Compiled modules on disk, so a restarted node does not compile its modules again.
//!
//! `<data>/cache/<module id>-<engine>.cwasm` holds wasmtime's serialized artifact followed by
//! the sha256 of it. `<engine>` is a hash of the engine's compatibility hash (wasmtime version,
//! compiler settings, CPU features), so an upgraded binary or a different configuration
//! misses the cache instead of loading an artifact built for another engine. A missing,
//! truncated or corrupt file is compiled again and rewritten; deleting the directory is
//! always safe.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};
use wraft_core::ModuleId;

/// The compile cache of one node.
#[derive(Debug)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
}

impl ArtifactCache {
    /// A cache in `dir` (created if missing) for artifacts of `engine`.
    pub fn open(dir: &Path, engine: &Engine) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        // Artifacts are of rewritten modules (call-depth counting): another rewrite, another tag.
        super::depth::REWRITE_VERSION.hash(&mut h);
        Ok(Self {
            dir: dir.to_path_buf(),
            engine_tag: format!("{:016x}", h.finish()),
        })
    }

    fn path(&self, id: &ModuleId) -> PathBuf {
        self.dir.join(format!("{id}-{}.cwasm", self.engine_tag))
    }

    /// The cached artifact of `id`, if present and intact.
    pub fn load(&self, engine: &Engine, id: &ModuleId) -> Option<Module> {
        let bytes = std::fs::read(self.path(id)).ok()?;
        let (artifact, sum) = bytes.split_at_checked(bytes.len().checked_sub(32)?)?;
        if Sha256::digest(artifact).as_slice() != sum {
            tracing::warn!(module = %id, "compile cache entry is corrupt; compiling again");
            return None;
        }
        // SAFETY: wasmtime requires that the bytes come from `Module::serialize` of a
        // compatible engine. They do: this node wrote them (see `store`), the file name
        // carries the engine's compatibility hash, the checksum above rules out a torn or
        // damaged file, and the data directory is as trusted as the LMDB files beside it.
        unsafe { Module::deserialize(engine, artifact) }
            .inspect_err(|e| tracing::warn!(module = %id, "compile cache entry refused: {e:#}"))
            .ok()
    }

    /// Stores `module` as the artifact of `id` (write to a temp file, then rename). Failure
    /// only costs a compile later, so it is logged, not returned.
    pub fn store(&self, id: &ModuleId, module: &Module) {
        let result = module
            .serialize()
            .map_err(std::io::Error::other)
            .and_then(|mut bytes| {
                let sum = Sha256::digest(&bytes);
                bytes.extend_from_slice(&sum);
                let tmp = self.dir.join(format!("{id}.tmp"));
                std::fs::write(&tmp, &bytes)?;
                std::fs::rename(&tmp, self.path(id))
            });
        if let Err(e) = result {
            tracing::warn!(module = %id, "could not write the compile cache: {e}");
        }
    }

    /// Deletes every artifact but those of `keep` for this engine, and interrupted writes;
    /// returns how many files it deleted. Other files in the directory are left alone.
    pub fn retain(&self, keep: &std::collections::HashSet<ModuleId>) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let kept: std::collections::HashSet<PathBuf> =
            keep.iter().map(|id| self.path(id)).collect();
        let mut deleted = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let ours = path.extension().is_some_and(|e| e == "cwasm" || e == "tmp");
            if ours && !kept.contains(&path) && std::fs::remove_file(&path).is_ok() {
                deleted += 1;
            }
        }
        deleted
    }

    /// Forgets the artifact of `id`.
    pub fn remove(&self, id: &ModuleId) {
        let _ = std::fs::remove_file(self.path(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A restart keeps the artifacts of the modules still deployed and deletes those of
    /// the others, of another engine and of interrupted writes, leaving files not its own.
    #[test]
    fn only_the_deployed_modules_artifacts_are_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).expect("cache");
        let wasm = wat::parse_str("(module)").expect("wat");
        let module = Module::new(&engine, wasm).expect("module");
        let (deployed, gone) = (ModuleId([1; 32]), ModuleId([2; 32]));
        cache.store(&deployed, &module);
        cache.store(&gone, &module);
        let foreign = dir
            .path()
            .join(format!("{deployed}-0000000000000000.cwasm"));
        let torn = dir.path().join(format!("{gone}.tmp"));
        let other = dir.path().join("notes.txt");
        for path in [&foreign, &torn, &other] {
            std::fs::write(path, b"x").expect("write");
        }
        let keep = std::collections::HashSet::from([deployed]);
        assert_eq!(cache.retain(&keep), 3);
        assert!(
            cache.load(&engine, &deployed).is_some(),
            "the deployed one went"
        );
        assert!(
            cache.load(&engine, &gone).is_none(),
            "the dropped one stayed"
        );
        assert!(
            !foreign.exists() && !torn.exists(),
            "another engine's or a torn file stayed"
        );
        assert!(other.exists(), "a file not the cache's was deleted");
    }
}
