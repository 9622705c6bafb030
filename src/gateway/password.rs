//! `[[users]]` password hashes: argon2id (RFC 9106) in the PHC string format, made by
//! `spate hash-password` and checked when a client authenticates. The `argon2` crate does
//! the cryptography; nothing here is home-made.
//!
//! The cost is argon2's default (19 MiB of memory, 2 passes, 1 lane, OWASP's first choice),
//! a few tens of milliseconds of one core per check: the gateway runs checks off its shard's
//! executor, and a hash with other parameters (made elsewhere) is checked with its own.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Longest password accepted (a client's AUTH line bounds what can arrive anyway).
pub const PASSWORD_MAX: usize = 1024;

/// A new hash of `password`, with 16 random bytes of salt from the kernel (getrandom(2)).
pub fn hash(password: &str) -> Result<String, String> {
    if password.is_empty() {
        return Err("the password is empty".into());
    }
    if password.len() > PASSWORD_MAX {
        return Err(format!("the password is over {PASSWORD_MAX} bytes"));
    }
    let random = [
        crate::dns::resolver::os_random(),
        crate::dns::resolver::os_random(),
    ];
    let bytes: Vec<u8> = random.iter().flat_map(|r| r.to_ne_bytes()).collect();
    let salt = SaltString::encode_b64(&bytes).map_err(|e| format!("cannot make a salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `phc` is a hash this build can check (argon2id, well formed): the configuration
/// refuses anything else at load, naming the user, rather than fail every login later.
pub fn check_hash(phc: &str) -> Result<(), String> {
    let h = PasswordHash::new(phc).map_err(|e| format!("not a PHC-format hash ({e})"))?;
    if h.algorithm.as_str() != "argon2id" {
        return Err(format!(
            "the algorithm is {}, not argon2id (make one with `spate hash-password`)",
            h.algorithm
        ));
    }
    if h.salt.is_none() || h.hash.is_none() {
        return Err("the hash has no salt or no output".into());
    }
    argon2::Params::try_from(&h).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    Ok(())
}

/// True when `password` matches `phc`. Runs the full hash (slow by design): call it off
/// the executor.
pub fn verify(password: &str, phc: &str) -> bool {
    if password.len() > PASSWORD_MAX {
        return false;
    }
    match PasswordHash::new(phc) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_checks_its_password_and_no_other() {
        let h = hash("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert_eq!(check_hash(&h), Ok(()));
        assert!(verify("correct horse", &h));
        assert!(!verify("correct horsE", &h));
        assert!(!verify("", &h));
        assert_ne!(hash("correct horse").unwrap(), h, "a new salt each time");
    }

    #[test]
    fn bad_hashes_and_passwords_are_named() {
        assert!(hash("").unwrap_err().contains("empty"));
        assert!(hash(&"x".repeat(PASSWORD_MAX + 1)).is_err());
        assert!(check_hash("$argon2id$...").unwrap_err().contains("PHC"));
        assert!(check_hash("plaintext").is_err());
        let bcrypt_like =
            "$argon2i$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        assert!(check_hash(bcrypt_like)
            .unwrap_err()
            .contains("not argon2id"));
        assert!(!verify("x", "garbage"));
    }
}
