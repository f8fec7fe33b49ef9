//! The pool wallet's key file (`DATA/wallet.key`): 64 hex characters, created on first start from the
//! operating system's randomness with mode 0600 and fsynced (file and directory) before use, so the
//! key a coinbase was paid to is never lost to a crash. Back this file up: it holds the pool's coins.

use crate::wallet::Wallet;
use bitcoin::hex::{DisplayHex as _, FromHex as _};
use std::io::Write as _;
use std::path::Path;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "wallet.key";

/// Why the key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("wallet key file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The content is not a key.
    #[error("wallet key file {path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

fn parse(path: &Path, text: &str) -> Result<Wallet, KeyFileError> {
    let invalid = |why: String| KeyFileError::Invalid {
        path: path.display().to_string(),
        why,
    };
    let bytes = <[u8; 32]>::from_hex(text.trim())
        .map_err(|e| invalid(format!("expected 64 hex characters (a 32-byte secret key): {e}")))?;
    Wallet::from_secret(&bytes).map_err(|e| invalid(e.to_string()))
}

/// Loads the wallet from `path`, creating a new random key there if the file does not exist.
/// Returns the wallet and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(Wallet, bool), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok((parse(path, &text)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let (wallet, bytes) = loop {
        let bytes: [u8; 32] = bitcoin::secp256k1::rand::random();
        if let Ok(w) = Wallet::from_secret(&bytes) {
            break (w, bytes);
        }
    };
    let hex = bytes.to_lower_hex_string();
    let tmp = path.with_extension("key.tmp");
    {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    // Never replace a key that appeared meanwhile (another process): hard link fails if it exists.
    std::fs::hard_link(&tmp, path).map_err(io)?;
    std::fs::remove_file(&tmp).map_err(io)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    }
    Ok((wallet, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_loaded_with_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KEY_FILE);
        let (a, created) = load_or_create(&p).unwrap();
        assert!(created);
        let (b, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(a.script(), b.script());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_key_file_is_a_clear_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(KEY_FILE);
        for bad in ["", "zz", &"0".repeat(64), &"g".repeat(64), &"ab".repeat(31)] {
            std::fs::write(&p, bad).unwrap();
            let e = load_or_create(&p).unwrap_err().to_string();
            assert!(e.contains("wallet key file"), "{e}");
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                bad,
                "the file is never replaced"
            );
        }
    }
}
