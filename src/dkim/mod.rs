//! DKIM signing (RFC 6376; Ed25519 by RFC 8463), sans I/O but for reading key files.
//!
//! A message is signed on its home shard right after rendering, over the DATA form that goes
//! on the wire (`smtp::data::Data`, read without its stuffed dots, as the receiver sees it):
//! nothing changes the message after that, so the signature verifies. Signing is by every
//! `[[dkim]]` entry of the From header's domain or, where that has none, of its nearest
//! parent that has some (DMARC's relaxed alignment). Every signature is relaxed/relaxed and
//! covers `SIGNED_FIELDS`, each over-signed (listed once more than it occurs) so that no such
//! field can be added in transit without breaking it.
//!
//! The cryptography is ring's (already in the tree through rustls): RSASSA-PKCS1-v1_5 with
//! SHA-256 and Ed25519 over the SHA-256 of the signed data. Canonicalisation is `canon`.

pub mod canon;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use canon::relaxed_header;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair, RsaKeyPair, RSA_PKCS1_SHA256};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The header fields every signature covers, in this order, each over-signed. The ones Gmail
/// and Yahoo's sender rules name (From, To, Subject, Date, Message-ID, MIME-Version,
/// Content-Type, the two List-Unsubscribe fields) and the others a forwarder could add or
/// change to alter what the reader sees.
pub const SIGNED_FIELDS: &[&str] = &[
    "from",
    "to",
    "cc",
    "reply-to",
    "sender",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-id",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "feedback-id",
];

/// Bytes of header section a message may have and still be signed; the DATA writer keeps
/// lines within 998 octets but not their number.
pub const HEADER_SECTION_BYTES_MAX: usize = 1 << 20;

/// The smallest RSA key signed with (RFC 8301: at least 1024 to verify, 2048 recommended to
/// sign; the big providers ask for 2048).
pub const RSA_BITS_MIN: usize = 2048;

/// A private key of one `[[dkim]]` entry.
enum Key {
    Rsa(RsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// One `[[dkim]]` entry with its key loaded and checked.
pub struct Signer {
    pub domain: String,
    pub selector: String,
    /// The key file, for messages about it.
    pub path: PathBuf,
    /// The signature's lifetime (`x=`), if set.
    pub expire: Option<Duration>,
    key: Key,
}

impl fmt::Debug for Signer {
    /// Names the entry, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Signer({} d={} s={} key={})",
            self.algorithm(),
            self.domain,
            self.selector,
            self.path.display()
        )
    }
}

impl Signer {
    /// Reads and checks the PEM key at `path` (RSA of at least 2048 bits, PKCS#1 or PKCS#8;
    /// Ed25519, PKCS#8). The error names the file.
    pub fn load(
        domain: &str,
        selector: &str,
        path: &Path,
        expire: Option<Duration>,
    ) -> Result<Signer, String> {
        let pem =
            std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Signer::from_pem(domain, selector, &pem, path, expire)
    }

    /// `load`, with the file's bytes in hand; `path` names them in messages.
    pub fn from_pem(
        domain: &str,
        selector: &str,
        pem: &[u8],
        path: &Path,
        expire: Option<Duration>,
    ) -> Result<Signer, String> {
        let key = key_from_pem(pem).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Signer {
            domain: domain.to_ascii_lowercase(),
            selector: selector.to_string(),
            path: path.to_path_buf(),
            expire,
            key,
        })
    }

    /// `a=`'s value.
    pub fn algorithm(&self) -> &'static str {
        match self.key {
            Key::Rsa(_) => "rsa-sha256",
            Key::Ed25519(_) => "ed25519-sha256",
        }
    }

    /// Where the public key is published: `selector._domainkey.domain`.
    pub fn record_name(&self) -> String {
        format!("{}._domainkey.{}", self.selector, self.domain)
    }

    /// The public key as the DNS record's `p=` carries it: an RSA key as its
    /// SubjectPublicKeyInfo (what `openssl rsa -pubout` and every DKIM tool publish), an
    /// Ed25519 key as its 32 octets (RFC 8463 4.2).
    pub fn public_key(&self) -> Vec<u8> {
        match &self.key {
            Key::Rsa(k) => rsa_spki(k.public().as_ref()),
            Key::Ed25519(k) => k.public_key().as_ref().to_vec(),
        }
    }

    /// The TXT record to publish at `record_name`.
    pub fn record(&self) -> String {
        let k = match self.key {
            Key::Rsa(_) => "rsa",
            Key::Ed25519(_) => "ed25519",
        };
        format!("v=DKIM1; k={k}; p={}", BASE64.encode(self.public_key()))
    }

    /// What is wrong with the TXT record(s) published at `record_name` for this key, if
    /// anything: none there, none that is a DKIM key, or keys that are not this one.
    pub fn check_published(&self, records: &[String]) -> Result<(), String> {
        let name = self.record_name();
        let keys: Vec<Vec<u8>> = records.iter().filter_map(|r| published_key(r)).collect();
        if keys.is_empty() {
            return Err(format!(
                "{name} has no DKIM key record; publish: {}",
                self.record()
            ));
        }
        let ours = self.public_key();
        let rsa_bare = match &self.key {
            Key::Rsa(k) => Some(k.public().as_ref().to_vec()),
            Key::Ed25519(_) => None,
        };
        // Some publish an RSA key as the bare RSAPublicKey rather than SubjectPublicKeyInfo;
        // verifiers accept both.
        if keys
            .iter()
            .any(|k| *k == ours || Some(k) == rsa_bare.as_ref())
        {
            return Ok(());
        }
        Err(format!(
            "{name} publishes a different key than {}; publish: {}",
            self.path.display(),
            self.record()
        ))
    }

    fn sign(&self, data: &[u8]) -> Vec<u8> {
        match &self.key {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                // ring fails only for a buffer of the wrong length or a broken random
                // source; the first cannot happen, the second leaves the message unsigned.
                match k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig) {
                    Ok(()) => sig,
                    Err(_) => Vec::new(),
                }
            }
            // RFC 8463 3: Ed25519 (PureEdDSA) over the SHA-256 of the data.
            Key::Ed25519(k) => {
                let hash = ring::digest::digest(&ring::digest::SHA256, data);
                k.sign(hash.as_ref()).as_ref().to_vec()
            }
        }
    }
}

fn key_from_pem(pem: &[u8]) -> Result<Key, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::PrivateKeyDer;
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no private key: {e}"))?;
    let rsa = |k: Result<RsaKeyPair, ring::error::KeyRejected>| match k {
        Ok(k) if k.public().modulus_len() * 8 < RSA_BITS_MIN => Err(format!(
            "RSA key of {} bits; DKIM keys must have at least {RSA_BITS_MIN}",
            k.public().modulus_len() * 8
        )),
        Ok(k) => Ok(Key::Rsa(k)),
        Err(e) if e.to_string() == "TooSmall" => Err(format!(
            "RSA key too small; DKIM keys must have at least {RSA_BITS_MIN} bits"
        )),
        Err(e) => Err(format!("not a usable RSA key: {e}")),
    };
    match der {
        PrivateKeyDer::Pkcs1(k) => rsa(RsaKeyPair::from_der(k.secret_pkcs1_der())),
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
                return Ok(Key::Ed25519(k));
            }
            match RsaKeyPair::from_pkcs8(der) {
                Err(ring::error::KeyRejected { .. }) if !is_rsa_pkcs8(der) => {
                    Err("neither an RSA nor an Ed25519 key (DKIM signs with those)".into())
                }
                k => rsa(k),
            }
        }
        _ => Err("neither an RSA nor an Ed25519 key (DKIM signs with those)".into()),
    }
}

/// The DER of rsaEncryption's object identifier (1.2.840.113549.1.1.1).
const RSA_OID: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

fn is_rsa_pkcs8(der: &[u8]) -> bool {
    memchr::memmem::find(&der[..der.len().min(32)], RSA_OID).is_some()
}

/// SubjectPublicKeyInfo for an RSAPublicKey: SEQUENCE { AlgorithmIdentifier { rsaEncryption,
/// NULL }, BIT STRING { RSAPublicKey } } (RFC 3279 2.3.1). DER encoding only.
fn rsa_spki(rsa_public_key: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let n = content.len();
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes: Vec<u8> = n
                .to_be_bytes()
                .into_iter()
                .skip_while(|&b| b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(content);
        out
    }
    let mut algorithm = RSA_OID.to_vec();
    algorithm.extend_from_slice(&[0x05, 0x00]);
    let mut bits = vec![0u8];
    bits.extend_from_slice(rsa_public_key);
    let mut body = tlv(0x30, &algorithm);
    body.extend(tlv(0x03, &bits));
    tlv(0x30, &body)
}

/// The `p=` of a DKIM key record, decoded; `None` if the record is not one or has no key.
fn published_key(record: &str) -> Option<Vec<u8>> {
    let mut p = None;
    for tag in record.split(';') {
        let Some((name, value)) = tag.split_once('=') else {
            continue;
        };
        match name.trim() {
            "v" if value.trim() != "DKIM1" => return None,
            "p" => p = Some(value),
            _ => {}
        }
    }
    let b64: String = p?.chars().filter(|c| !c.is_whitespace()).collect();
    BASE64.decode(b64).ok().filter(|k| !k.is_empty())
}

/// The configured signers by domain.
#[derive(Debug, Default, Clone)]
pub struct Signers {
    by_domain: HashMap<String, Vec<Arc<Signer>>>,
}

impl Signers {
    pub fn new(signers: impl IntoIterator<Item = Arc<Signer>>) -> Signers {
        let mut by_domain: HashMap<String, Vec<Arc<Signer>>> = HashMap::new();
        for s in signers {
            by_domain.entry(s.domain.clone()).or_default().push(s);
        }
        Signers { by_domain }
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    /// The signers aligned with a From domain (A-labels, lower case): its own entries or
    /// those of its nearest parent that has entries.
    pub fn aligned(&self, from_domain: &str) -> &[Arc<Signer>] {
        let mut d = from_domain.trim_end_matches('.');
        loop {
            if let Some(s) = self.by_domain.get(d) {
                return s;
            }
            match d.split_once('.') {
                Some((_, parent)) if !parent.is_empty() => d = parent,
                _ => return &[],
            }
        }
    }
}

/// Adds one header-section line to `fields`: a new field, or a continuation of the last.
fn push_field_line(fields: &mut Vec<Vec<u8>>, line: &[u8]) {
    match fields.last_mut() {
        Some(f) if line.starts_with(b" ") || line.starts_with(b"\t") => {
            f.extend_from_slice(b"\r\n");
            f.extend_from_slice(line);
        }
        _ => fields.push(line.to_vec()),
    }
}

/// The header fields of a message in DATA form (dot-stuffed, ending in CRLF.CRLF), without
/// their stuffed dots or final CRLFs, and where its body starts. Every line that starts with
/// a dot there had it doubled, so dropping one gives what the receiver stores.
fn header_fields(data: &[u8]) -> Result<(Vec<Vec<u8>>, usize), String> {
    let mut fields: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let end = memchr::memchr(b'\n', &data[at..]).map_or(data.len(), |p| at + p + 1);
        let line = &data[at..end];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return Ok((fields, end));
        }
        if end > HEADER_SECTION_BYTES_MAX {
            return Err(format!(
                "header section over {HEADER_SECTION_BYTES_MAX} bytes"
            ));
        }
        push_field_line(&mut fields, line.strip_prefix(b".").unwrap_or(line));
        at = end;
    }
    Ok((fields, data.len()))
}

/// The lower-case name of a header field (`field` without its CRLF).
fn field_name(field: &[u8]) -> Option<String> {
    let colon = memchr::memchr(b':', field)?;
    let name = std::str::from_utf8(&field[..colon]).ok()?;
    Some(name.trim_end().to_ascii_lowercase())
}

/// The value of the first field named `name` in a list of fields, unfolded.
fn field_value(fields: &[Vec<u8>], name: &str) -> Option<String> {
    fields.iter().find_map(|f| {
        if field_name(f)? != name {
            return None;
        }
        let colon = memchr::memchr(b':', f)?;
        let v = String::from_utf8_lossy(&f[colon + 1..]);
        Some(v.replace("\r\n", "").trim().to_string())
    })
}

/// What the From header of `message` (its header section, then anything) says.
pub fn from_field(message: &[u8]) -> FromField {
    let end = crate::template::header_section_end(message).unwrap_or(message.len());
    let mut fields = Vec::new();
    for line in message[..end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !line.is_empty() {
            push_field_line(&mut fields, line);
        }
    }
    from_fields(&fields)
}

/// What a message's From header says about its author.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromField {
    Missing,
    /// One From field holding one valid address: its domain as A-labels.
    Domain(String),
    /// Why the From is not one valid address (several fields, several addresses, bad syntax).
    Invalid(String),
}

fn from_fields(fields: &[Vec<u8>]) -> FromField {
    let count = fields
        .iter()
        .filter(|f| field_name(f).as_deref() == Some("from"))
        .count();
    match count {
        0 => return FromField::Missing,
        1 => {}
        n => return FromField::Invalid(format!("{n} From fields")),
    }
    let value = field_value(fields, "from").unwrap_or_default();
    match author_domain(&value) {
        Ok(d) => FromField::Domain(d),
        Err(why) => FromField::Invalid(why),
    }
}

/// The domain of the single mailbox in a From value (`Name <a@b>`, `a@b`, comments and quoted
/// display names allowed), as A-labels.
pub fn author_domain(value: &str) -> Result<String, String> {
    // Drop comments and quoted strings (display names), remembering where an address sits.
    let mut plain = String::with_capacity(value.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => plain.push(c),
        }
    }
    if quoted || depth > 0 {
        return Err(format!("From {value:?}: unbalanced quote or comment"));
    }
    if plain.contains(',') || plain.contains(';') {
        return Err(format!("From {value:?}: not a single address"));
    }
    let addr = match (plain.find('<'), plain.rfind('>')) {
        (Some(open), Some(close)) if open < close && plain[..open].find('<').is_none() => {
            plain[open + 1..close].trim().to_string()
        }
        (None, None) => plain.trim().to_string(),
        _ => return Err(format!("From {value:?}: unbalanced angle brackets")),
    };
    crate::address::parse_address(&addr)
        .map(|a| a.domain)
        .map_err(|e| format!("From: {e}"))
}

/// The DKIM-Signature fields for a message in DATA form, by every signer aligned with its
/// From domain, at `now_unix_s`, to go on top of the message; nothing if none is aligned (or
/// the From is not one valid address). An error leaves the message unsigned.
pub fn sign(data: &[u8], signers: &Signers, now_unix_s: u64) -> Result<Vec<u8>, String> {
    if signers.is_empty() {
        return Ok(Vec::new());
    }
    let data = data.strip_suffix(b".\r\n").unwrap_or(data);
    let (fields, body_start) = header_fields(data)?;
    let FromField::Domain(domain) = from_fields(&fields) else {
        return Ok(Vec::new());
    };
    let signers = signers.aligned(&domain);
    if signers.is_empty() {
        return Ok(Vec::new());
    }
    let body_hash = canon::relaxed_body_hash(&data[body_start..]);
    let body_hash = BASE64.encode(body_hash.as_ref());
    // The signed fields' canonical forms, each name's occurrences from the bottom up as a
    // verifier takes them (RFC 6376 5.4.2), and the `h=` list naming one more than occur.
    let mut signed = Vec::with_capacity(1024);
    let mut names = Vec::new();
    let named: Vec<(Option<String>, &Vec<u8>)> =
        fields.iter().map(|f| (field_name(f), f)).collect();
    for &name in SIGNED_FIELDS {
        let mut n = 0;
        for (_, f) in named
            .iter()
            .rev()
            .filter(|(n, _)| n.as_deref() == Some(name))
        {
            relaxed_header(f, &mut signed);
            n += 1;
        }
        names.extend(std::iter::repeat_n(name, n + 1));
    }
    let h = fold_list(&names, "h=", ":");
    let mut out = Vec::new();
    for s in signers {
        let mut field = format!(
            "DKIM-Signature: v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={now_unix_s};",
            s.algorithm(),
            s.domain,
            s.selector
        );
        if let Some(x) = s.expire {
            field.push_str(&format!(" x={};", now_unix_s + x.as_secs().max(1)));
        }
        field.push_str(&format!("\r\n\t{h};\r\n\tbh={body_hash};\r\n\tb="));
        let mut data = signed.clone();
        relaxed_header(field.as_bytes(), &mut data);
        // The signature field itself is signed without its CRLF (RFC 6376 3.7).
        data.truncate(data.len() - 2);
        let sig = s.sign(&data);
        if sig.is_empty() {
            return Err(format!("{s:?}: signing failed"));
        }
        let b = BASE64.encode(sig);
        let chunks: Vec<&str> = b
            .as_bytes()
            .chunks(72)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        field.push_str(&chunks.join("\r\n\t "));
        field.push_str("\r\n");
        out.extend_from_slice(field.as_bytes());
    }
    Ok(out)
}

/// `prefix` then `items` joined by `sep`, folded before an item that would pass 76 columns.
fn fold_list(items: &[&str], prefix: &str, sep: &str) -> String {
    let mut out = String::from(prefix);
    let mut column = 8 + prefix.len();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
            column += sep.len();
            if column + item.len() > 76 {
                out.push_str("\r\n\t ");
                column = 9;
            }
        }
        out.push_str(item);
        column += item.len();
    }
    out
}

#[cfg(test)]
mod tests;
