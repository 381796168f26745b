//! The ledger's outbox: usage rows whose commit failed (the store is down or refusing) wait
//! here, on disk, until the store takes them again, so that a store outage loses no row.
//!
//! One file of JSON lines, one [`UsageEntry`] a line, appended and `fsync`ed before the
//! rows count as handled. The ledger writer (`crate::billing`) owns it: it appends a batch
//! whose commit failed, and replays the whole file every [`REPLAY_EVERY`] while it is not
//! empty (and once when the gateway starts, for rows left by a gateway that stopped during an
//! outage). A replay commits in batches; the store's `record` is idempotent by invocation id,
//! so a replay cut short and begun again never bills a row twice. Once every row is in, the
//! file is emptied.
//!
//! Bound: `ledger_outbox_rows_max`. While the outbox holds that many rows the gateway refuses
//! new invocations (503 naming the bound) rather than lose a row; rows of invocations already
//! running are still appended, so the file holds at most the bound plus the ledger queue's
//! and the gateway's in-flight bounds.
//!
//! A line that does not parse (a write cut short by a crash) is skipped and logged when the
//! file is read: it is the one row a crash mid-append can lose, as the ledger writer's batch
//! in memory is.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use turnpike_store::UsageEntry;

/// How often a non-empty outbox is replayed.
pub const REPLAY_EVERY: Duration = Duration::from_secs(1);
/// Default of `ledger_outbox_rows_max`: about 200 MB of rows.
pub const LEDGER_OUTBOX_ROWS_MAX_DEFAULT: u64 = 1_000_000;

/// Why the outbox could not keep or read its rows.
#[derive(Debug, thiserror::Error)]
#[error("the ledger outbox {path}: {source}")]
pub struct OutboxError {
    path: PathBuf,
    source: std::io::Error,
}

/// The outbox file and the rows in it.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    rows: u64,
}

impl Outbox {
    /// Opens the outbox at `path` (created, with its directory, if missing) and counts the
    /// rows a previous gateway left.
    pub fn open(path: &Path) -> Result<Self, OutboxError> {
        let mut outbox = Self {
            path: path.to_path_buf(),
            rows: 0,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| outbox.error(e))?;
        }
        outbox.rows = outbox.read()?.len() as u64;
        Ok(outbox)
    }

    /// Rows waiting.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends `rows`, on disk when this returns.
    pub fn append(&mut self, rows: &[UsageEntry]) -> Result<(), OutboxError> {
        let mut text = String::new();
        for row in rows {
            // A `UsageEntry` is plain data: serializing it cannot fail.
            let line = serde_json::to_string(row).unwrap_or_default();
            text.push_str(&line);
            text.push('\n');
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| self.error(e))?;
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_data())
            .map_err(|e| self.error(e))?;
        self.rows += rows.len() as u64;
        Ok(())
    }

    /// Every row waiting, oldest first.
    pub fn read(&self) -> Result<Vec<UsageEntry>, OutboxError> {
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.error(e)),
        };
        let mut rows = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| self.error(e))?;
            match serde_json::from_str(&line) {
                Ok(row) => rows.push(row),
                Err(e) => tracing::error!(
                    path = %self.path.display(),
                    line = n + 1,
                    "a ledger outbox line does not parse (a write cut short?), skipped: {e}"
                ),
            }
        }
        Ok(rows)
    }

    /// Empties the outbox: every row it held is in the store.
    pub fn clear(&mut self) -> Result<(), OutboxError> {
        match std::fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.error(e)),
        }
        self.rows = 0;
        Ok(())
    }

    fn error(&self, source: std::io::Error) -> OutboxError {
        OutboxError {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(invocation: i64) -> UsageEntry {
        UsageEntry {
            gb_seconds: 0.25,
            ..crate::billing::acme_critical(invocation, 1_800_000_000, 1_500, 3.5)
        }
    }

    #[test]
    fn rows_survive_a_reopen_and_a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("outbox/ledger.jsonl");
        let mut outbox = Outbox::open(&path).unwrap();
        assert_eq!(outbox.rows(), 0);
        outbox.append(&[row(1), row(2)]).unwrap();
        outbox.append(&[row(3)]).unwrap();
        // A crash mid-append leaves half a line.
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"invocation\":4,\"ten").unwrap();
        let reopened = Outbox::open(&path).unwrap();
        assert_eq!(reopened.rows(), 3);
        assert_eq!(reopened.read().unwrap(), vec![row(1), row(2), row(3)]);
        let mut reopened = reopened;
        reopened.clear().unwrap();
        assert_eq!(reopened.rows(), 0);
        assert!(Outbox::open(&path).unwrap().read().unwrap().is_empty());
    }

    #[test]
    fn an_outbox_that_cannot_be_written_says_where() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be.
        let path = dir.path().join("taken");
        std::fs::create_dir(&path).unwrap();
        let error = Outbox::open(&path).unwrap_err();
        assert!(error.to_string().contains("taken"), "{error}");
    }
}
