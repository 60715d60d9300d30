//! A lease's SSH key on this machine: the key pair (generated in-process in
//! OpenSSH's formats, or the member's own), kept where Crabbox keeps a
//! lease's key (`<user config>/crabbox/testboxes/<lease>/id_ed25519`, its
//! `testboxKeyPath`, lease.go:72-81) so either tool reaches the other's
//! servers, and the endpoint record a later process reaches the server
//! with, written under `<state>/ssh/keys/<lease>/`.

use std::path::{Path, PathBuf};

use crabbox_fs::atomic_file;

use super::endpoint::ENDPOINT_FILE;

/// A lease's SSH key.
pub(crate) struct LeaseKey {
    /// The private key file.
    pub(crate) private: PathBuf,
    /// The public key line.
    pub(crate) public: String,
    /// A key generated now, whose files are still to be written.
    pub(crate) new: Option<openssh_ed25519::Key>,
}

/// Hetzner's fingerprint of an OpenSSH public key line: the MD5 of the key
/// blob as colon-separated lowercase hex (`aa:bb:…`), what `GET
/// /ssh_keys?fingerprint=` filters on. `None` when the line has no
/// base64 blob.
pub(crate) fn fingerprint(public_key: &str) -> Option<String> {
    use base64::Engine as _;
    use md5::Digest as _;
    let blob = public_key.split_whitespace().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(blob)
        .ok()?;
    let digest = md5::Md5::digest(&bytes);
    Some(
        digest
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":"),
    )
}

/// Prefix of a lease directory still being written: `.creating-<lease>.<pond>`.
pub(crate) const CREATING_PREFIX: &str = ".creating-";

/// The staging directory a lease's files are written in before the lease
/// directory exists: named after the pond, so a create killed before even
/// its record was written leaves a directory the pond's sweep (which holds
/// the pond lock, so no create of the pond runs) knows is its own.
pub(crate) fn staging_name(lease_id: &str, pond: &str) -> String {
    format!("{CREATING_PREFIX}{lease_id}.{pond}")
}

/// The pond of a staging directory's name, if it is one.
pub(crate) fn staging_pond(name: &str) -> Option<&str> {
    let (lease, pond) = name.strip_prefix(CREATING_PREFIX)?.split_once('.')?;
    crabbox_core::lease::is_lease_id(lease).then_some(pond)
}

/// Writes the lease's endpoint record as `dir/endpoint.json`. A first
/// create writes it into a staging directory beside it and renames that
/// into place, so `dir` appears whole; a retried create (the directory
/// exists) rewrites the record in place.
pub(crate) fn write_lease_files(dir: &Path, pond: &str, record: &[u8]) -> Result<(), String> {
    let lease = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{} names no lease", dir.display()))?;
    let fresh = !dir.exists();
    let target = if fresh {
        let staging = dir.with_file_name(staging_name(lease, pond));
        let _ = std::fs::remove_dir_all(&staging);
        staging
    } else {
        dir.to_owned()
    };
    atomic_file::create_private_dir(&target).map_err(|e| e.to_string())?;
    let path = target.join(ENDPOINT_FILE);
    atomic_file::write(&path, record).map_err(|e| format!("writing {}: {e}", path.display()))?;
    if fresh {
        std::fs::rename(&target, dir)
            .map_err(|e| format!("moving {} into place: {e}", target.display()))?;
    }
    Ok(())
}

/// Writes a new lease key as `private` and `private.pub` (mode 0600, in a
/// directory of mode 0700), replacing what an earlier attempt left. Called
/// after the endpoint record exists, so a sweep that finds the record
/// also removes the key.
pub(crate) fn write_lease_key(private: &Path, key: &openssh_ed25519::Key) -> Result<(), String> {
    if let Some(dir) = private.parent() {
        atomic_file::create_private_dir(dir).map_err(|e| e.to_string())?;
    }
    let mut public = private.as_os_str().to_owned();
    public.push(".pub");
    let public = Path::new(&public);
    let _ = std::fs::remove_file(private);
    let _ = std::fs::remove_file(public);
    for (path, text) in [(private, &key.private), (public, &key.public)] {
        write_new_private(path, text.as_bytes())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Creates `path` (mode 0600) with `contents`; it must not exist.
pub(crate) fn write_new_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(contents)
}

/// Ed25519 key pairs in OpenSSH's own formats (`PROTOCOL.key`): an
/// unencrypted `openssh-key-v1` private key and a `ssh-ed25519 …` line.
pub(crate) mod openssh_ed25519 {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};

    use crabbox_core::provider::ProviderError;

    /// A new key pair's two files.
    pub(crate) struct Key {
        /// `-----BEGIN OPENSSH PRIVATE KEY-----` … (mode 0600 on disk).
        pub private: String,
        /// `ssh-ed25519 AAAA… <comment>` and a newline.
        pub public: String,
    }

    /// A fresh key pair with `comment`.
    pub(crate) fn generate(comment: &str) -> Result<Key, ProviderError> {
        let mut seed = [0_u8; 32];
        let failed = |what: &str| ProviderError::Failed(format!("generating an SSH key: {what}"));
        getrandom::fill(&mut seed).map_err(|e| failed(&e.to_string()))?;
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| failed(&e.to_string()))?;
        let public: &[u8] = pair.public_key().as_ref();
        Ok(encode(&seed, public, comment))
    }

    /// The two files for a seed and its public key.
    pub(crate) fn encode(seed: &[u8; 32], public: &[u8], comment: &str) -> Key {
        let mut blob = Vec::new();
        string(&mut blob, b"ssh-ed25519");
        string(&mut blob, public);

        let mut check = [0_u8; 4];
        let _ = getrandom::fill(&mut check);
        let mut secret = Vec::new();
        secret.extend_from_slice(&check);
        secret.extend_from_slice(&check);
        string(&mut secret, b"ssh-ed25519");
        string(&mut secret, public);
        let mut both = seed.to_vec();
        both.extend_from_slice(public);
        string(&mut secret, &both);
        string(&mut secret, comment.as_bytes());
        // Padded with 1, 2, 3… to the cipher's block size (8 for "none").
        let mut pad = 1_u8;
        while secret.len() % 8 != 0 {
            secret.push(pad);
            pad += 1;
        }

        let mut file = b"openssh-key-v1\0".to_vec();
        string(&mut file, b"none");
        string(&mut file, b"none");
        string(&mut file, b"");
        file.extend_from_slice(&1_u32.to_be_bytes());
        string(&mut file, &blob);
        string(&mut file, &secret);

        let body = base64(&file);
        let mut private = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
        for line in body.as_bytes().chunks(70) {
            private.push_str(std::str::from_utf8(line).unwrap_or_default());
            private.push('\n');
        }
        private.push_str("-----END OPENSSH PRIVATE KEY-----\n");
        Key {
            private,
            public: format!("ssh-ed25519 {} {comment}\n", base64(&blob)),
        }
    }

    /// SSH's `string`: a big-endian u32 length, then the bytes.
    fn string(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(bytes);
    }

    /// Standard base64 with padding.
    pub(crate) fn base64(bytes: &[u8]) -> String {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_openssh_ed25519_keys() {
        assert_eq!(openssh_ed25519::base64(b""), "");
        assert_eq!(openssh_ed25519::base64(b"f"), "Zg==");
        assert_eq!(openssh_ed25519::base64(b"fo"), "Zm8=");
        assert_eq!(openssh_ed25519::base64(b"foobar"), "Zm9vYmFy");
        let key = openssh_ed25519::generate("crabbox-cbx_0123456789ab").expect("key");
        assert!(
            key.public
                .starts_with("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI")
        );
        assert!(key.public.ends_with(" crabbox-cbx_0123456789ab\n"));
        // OpenSSH reads the private key and derives the same public key.
        let dir = tempfile::tempdir().expect("tempdir");
        let private = dir.path().join("id_ed25519");
        write_new_private(&private, key.private.as_bytes()).expect("write");
        let derived = std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&private)
            .output()
            .expect("ssh-keygen runs (openssh-client)");
        assert!(derived.status.success(), "{derived:?}");
        assert_eq!(
            String::from_utf8_lossy(&derived.stdout).trim(),
            key.public.trim(),
            "ssh-keygen -y prints the same key and comment"
        );
    }

    #[test]
    fn fingerprints_are_hetzners_md5_as_ssh_keygen_prints_it() {
        let key = openssh_ed25519::generate("crabbox-fp").expect("key");
        let dir = tempfile::tempdir().expect("tempdir");
        let public = dir.path().join("id_ed25519.pub");
        std::fs::write(&public, &key.public).expect("write");
        let listed = std::process::Command::new("ssh-keygen")
            .args(["-l", "-E", "md5", "-f"])
            .arg(&public)
            .output()
            .expect("ssh-keygen runs (openssh-client)");
        assert!(listed.status.success(), "{listed:?}");
        // `256 MD5:aa:bb:… comment (ED25519)`
        let text = String::from_utf8_lossy(&listed.stdout);
        let expected = text
            .split_whitespace()
            .nth(1)
            .and_then(|f| f.strip_prefix("MD5:"))
            .expect("an MD5 fingerprint");
        assert_eq!(fingerprint(&key.public).as_deref(), Some(expected));
        assert_eq!(fingerprint("ssh-ed25519"), None, "no blob");
        assert_eq!(fingerprint("ssh-ed25519 not*base64"), None);
    }
}
