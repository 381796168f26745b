//! Checking an uploaded component before it is stored: the gateway asks a [`ComponentCheck`]
//! that whoever assembles it provides (`turnpike-cluster` gives one that compiles the
//! component with the worker's wasm runtime, into the compile cache the workers read). So the
//! gateway itself links no wasm runtime, and its tests need none.

/// Why an upload was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The bytes are not a component this platform can run (the uploader's error: 400).
    #[error("not a deployable component: {0}")]
    NotDeployable(String),
    /// The checker itself failed (the platform's error: 500).
    #[error("checking the component: {0}")]
    Unavailable(String),
}

/// Checks uploaded components. Called on a blocking thread: checking may compile.
pub trait ComponentCheck: Send + Sync + std::fmt::Debug + 'static {
    /// The component's content hash (lowercase hex SHA-256) if it can be deployed.
    fn check(&self, bytes: &[u8]) -> Result<String, CheckError>;
}

/// Accepts any bytes as a component, hashing them: for unit tests of the gateway's logic.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct AcceptAll;

#[cfg(test)]
impl ComponentCheck for AcceptAll {
    fn check(&self, bytes: &[u8]) -> Result<String, CheckError> {
        Ok(format!("{:016x}", bytes.len()))
    }
}
