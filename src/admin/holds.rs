//! What operators told the engine to hold back or bounce (`spate queue suspend|resume|bounce`),
//! as one immutable value every shard checks while it routes: suspensions stay until
//! resumed and survive restarts (`<data_dir>/admin/holds.json`); a bounce applies to the
//! matching mail queued before it was asked for, never to mail that comes later.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What an operator command names (INTERFACE.md: a provider or site name, `domain:D`,
/// `campaign:C`, `tenant:T`, `source:S`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// A throttle scope: a provider's name, `site:...` or `route:...`.
    Scope(String),
    Domain(String),
    Campaign(String),
    Tenant(String),
    Source(String),
}

/// A target's text may take this much (a site key names its MX hosts).
pub const TARGET_BYTES_MAX: usize = 1024;

impl Target {
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("an empty target".into());
        }
        if s.len() > TARGET_BYTES_MAX {
            return Err(format!("a target of more than {TARGET_BYTES_MAX} bytes"));
        }
        if s.chars().any(|c| c.is_control()) {
            return Err("a target with control characters".into());
        }
        let value = |v: &str, what: &str| {
            if v.is_empty() {
                Err(format!("{what}: with nothing after it"))
            } else {
                Ok(v.to_string())
            }
        };
        Ok(match s.split_once(':') {
            Some(("domain", d)) => Target::Domain(value(d, "domain:")?.to_ascii_lowercase()),
            Some(("campaign", c)) => Target::Campaign(value(c, "campaign:")?),
            Some(("tenant", t)) => Target::Tenant(value(t, "tenant:")?),
            Some(("source", t)) => Target::Source(value(t, "source:")?),
            _ => Target::Scope(s.to_string()),
        })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Scope(s) => write!(f, "{s}"),
            Target::Domain(d) => write!(f, "domain:{d}"),
            Target::Campaign(c) => write!(f, "campaign:{c}"),
            Target::Tenant(t) => write!(f, "tenant:{t}"),
            Target::Source(s) => write!(f, "source:{s}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        let s = String::deserialize(d)?;
        Target::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// One operator action in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub target: Target,
    /// When it was asked for (Unix ms).
    pub at_unix_ms: u64,
    #[serde(default)]
    pub reason: String,
}

/// What a recipient's check says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Suspended: it waits, untouched, until resumed.
    Hold(&'a Rule),
    /// Bounced by an operator, with the rule's reason.
    Bounce(&'a Rule),
}

/// The suspensions and bounces in force. Immutable once built: a change makes a new one,
/// which every shard picks up at its next tick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holds {
    #[serde(default)]
    pub suspended: Vec<Rule>,
    #[serde(default)]
    pub bounces: Vec<Rule>,
    #[serde(skip)]
    lookup: Lookup,
}

/// The rules by target, for a check that costs a hash lookup or two per recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Lookup {
    /// Per kind of target (`Target::kind`), its text to the rule's index: a check borrows
    /// the recipient's strings, it allocates nothing.
    suspended: [HashMap<String, usize>; KINDS],
    bounces: [HashMap<String, usize>; KINDS],
    by_scope: bool,
    by_message: bool,
    /// Suspensions of a scope at one source (`yahoo@mta1`): by scope, (source, rule index).
    sourced: HashMap<String, Vec<(String, usize)>>,
    /// Some suspension names a source or a scope at one source.
    by_source: bool,
}

const KINDS: usize = 5;
const SCOPE: usize = 0;
const DOMAIN: usize = 1;
const CAMPAIGN: usize = 2;
const TENANT: usize = 3;
const SOURCE: usize = 4;

impl Target {
    /// Its kind (an index of `Lookup`'s maps) and its text within that kind.
    fn kind(&self) -> (usize, &str) {
        match self {
            Target::Scope(s) => (SCOPE, s),
            Target::Domain(d) => (DOMAIN, d),
            Target::Campaign(c) => (CAMPAIGN, c),
            Target::Tenant(t) => (TENANT, t),
            Target::Source(s) => (SOURCE, s),
        }
    }
}

/// Suspensions and bounces kept at most; one more is refused (each is a lookup per
/// recipient routed).
pub const RULES_MAX: usize = 10_000;

impl Holds {
    pub fn new(suspended: Vec<Rule>, bounces: Vec<Rule>) -> Holds {
        let mut h = Holds {
            suspended,
            bounces,
            lookup: Lookup::default(),
        };
        h.index();
        h
    }

    fn index(&mut self) {
        let mut l = Lookup::default();
        for (i, r) in self.suspended.iter().enumerate() {
            let (k, text) = r.target.kind();
            l.suspended[k].insert(text.to_string(), i);
            if k == SCOPE {
                if let (base, Some(source)) = crate::delivery::scope::split_key(text) {
                    l.sourced
                        .entry(base.to_string())
                        .or_default()
                        .push((source.to_string(), i));
                }
            }
        }
        l.by_source = !l.suspended[SOURCE].is_empty() || !l.sourced.is_empty();
        for (i, r) in self.bounces.iter().enumerate() {
            let (k, text) = r.target.kind();
            l.bounces[k].insert(text.to_string(), i);
        }
        let all = || self.suspended.iter().chain(&self.bounces);
        l.by_scope = all().any(|r| matches!(r.target, Target::Scope(_)));
        l.by_message = all().any(|r| !matches!(r.target, Target::Scope(_) | Target::Source(_)));
        self.lookup = l;
    }

    pub fn is_empty(&self) -> bool {
        self.suspended.is_empty() && self.bounces.is_empty()
    }

    pub fn suspension(&self, target: &Target) -> Option<&Rule> {
        let (k, text) = target.kind();
        self.lookup.suspended[k]
            .get(text)
            .map(|&i| &self.suspended[i])
    }

    /// A copy with `target` suspended (its first suspension's time kept); `None` if it
    /// already was.
    pub fn suspend(&self, rule: Rule) -> Result<Option<Holds>, String> {
        if self.suspension(&rule.target).is_some() {
            return Ok(None);
        }
        if self.suspended.len() >= RULES_MAX {
            return Err(format!("{RULES_MAX} suspensions are in force already"));
        }
        let mut suspended = self.suspended.clone();
        suspended.push(rule);
        Ok(Some(Holds::new(suspended, self.bounces.clone())))
    }

    /// A copy without `target`'s suspension; `None` if it had none.
    pub fn resume(&self, target: &Target) -> Option<Holds> {
        self.suspension(target)?;
        let suspended = self
            .suspended
            .iter()
            .filter(|r| &r.target != target)
            .cloned()
            .collect();
        Some(Holds::new(suspended, self.bounces.clone()))
    }

    /// A copy with a bounce of `rule.target`'s mail queued until now (a later bounce of the
    /// same target replaces an earlier one: it covers more).
    pub fn bounce(&self, rule: Rule) -> Result<Holds, String> {
        let mut bounces: Vec<Rule> = self
            .bounces
            .iter()
            .filter(|r| r.target != rule.target)
            .cloned()
            .collect();
        if bounces.len() >= RULES_MAX {
            return Err(format!("{RULES_MAX} bounces are in force already"));
        }
        bounces.push(rule);
        Ok(Holds::new(self.suspended.clone(), bounces))
    }

    /// A copy without the bounces asked for before `before_unix_ms` (no mail queued before
    /// them can still be queued after the queue's `max_age`); `None` if none went.
    pub fn without_bounces_before(&self, before_unix_ms: u64) -> Option<Holds> {
        if self.bounces.iter().all(|r| r.at_unix_ms >= before_unix_ms) {
            return None;
        }
        let bounces = self
            .bounces
            .iter()
            .filter(|r| r.at_unix_ms >= before_unix_ms)
            .cloned()
            .collect();
        Some(Holds::new(self.suspended.clone(), bounces))
    }

    /// True if some rule names a domain, campaign, tenant or source (`check_message` can say
    /// something); false lets the scheduler skip the check.
    pub fn by_message(&self) -> bool {
        self.lookup.by_message
    }

    pub fn by_scope(&self) -> bool {
        self.lookup.by_scope
    }

    /// True if a suspension names a source, or a scope at one source: routing then checks
    /// each source it picks (`schedule::egress`).
    pub fn suspends_sources(&self) -> bool {
        self.lookup.by_source
    }

    /// The suspension of egress source `name`, if any.
    pub fn source_suspension(&self, name: &str) -> Option<&Rule> {
        self.lookup.suspended[SOURCE]
            .get(name)
            .map(|&i| &self.suspended[i])
    }

    /// The suspension of scope `base` sent from source `source` (target `base@source`).
    pub fn sourced_scope_suspension(&self, base: &str, source: &str) -> Option<&Rule> {
        let list = self.lookup.sourced.get(base)?;
        list.iter()
            .find(|(s, _)| s == source)
            .map(|&(_, i)| &self.suspended[i])
    }

    /// The verdict for a recipient at `domain` of a message of `campaign` and `tenant`,
    /// queued at `created_unix_ms`. A bounce wins over a suspension.
    pub fn check_message(
        &self,
        domain: &str,
        campaign: &str,
        tenant: &str,
        created_unix_ms: u64,
    ) -> Option<Verdict<'_>> {
        if !self.lookup.by_message {
            return None;
        }
        self.verdict(
            &[(DOMAIN, domain), (CAMPAIGN, campaign), (TENANT, tenant)],
            created_unix_ms,
        )
    }

    /// The verdict for a recipient routed to `scope`.
    pub fn check_scope(&self, scope: &str, created_unix_ms: u64) -> Option<Verdict<'_>> {
        if !self.lookup.by_scope {
            return None;
        }
        self.verdict(&[(SCOPE, scope)], created_unix_ms)
    }

    fn verdict(&self, keys: &[(usize, &str)], created_unix_ms: u64) -> Option<Verdict<'_>> {
        for &(k, text) in keys {
            if let Some(&i) = self.lookup.bounces[k].get(text) {
                let r = &self.bounces[i];
                if created_unix_ms <= r.at_unix_ms {
                    return Some(Verdict::Bounce(r));
                }
            }
        }
        keys.iter()
            .find_map(|&(k, text)| self.lookup.suspended[k].get(text))
            .map(|&i| Verdict::Hold(&self.suspended[i]))
    }

    /// Reads `<data_dir>/admin/holds.json`; none there is no holds.
    pub fn load(data_dir: &Path) -> Result<Holds, String> {
        let path = holds_path(data_dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Holds::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let h: Holds =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Holds::new(h.suspended, h.bounces))
    }

    /// Writes them durably (a new file, synced, renamed over the old one).
    pub fn save(&self, data_dir: &Path) -> io::Result<()> {
        let path = holds_path(data_dir);
        let dir = path.parent().expect("holds.json has a folder");
        std::fs::create_dir_all(dir)?;
        let tmp = dir.join("holds.json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

pub fn holds_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin").join("holds.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(t: &str, at: u64) -> Rule {
        Rule {
            target: Target::parse(t).unwrap(),
            at_unix_ms: at,
            reason: "why".into(),
        }
    }

    #[test]
    fn targets_read_as_interface_md_names_them() {
        assert_eq!(
            Target::parse("domain:Example.COM"),
            Ok(Target::Domain("example.com".into()))
        );
        assert_eq!(
            Target::parse("campaign:c1"),
            Ok(Target::Campaign("c1".into()))
        );
        assert_eq!(Target::parse("yahoo"), Ok(Target::Scope("yahoo".into())));
        assert_eq!(
            Target::parse("site:mx1.a,mx2.a"),
            Ok(Target::Scope("site:mx1.a,mx2.a".into()))
        );
        assert!(Target::parse("").is_err());
        assert!(Target::parse("domain:").is_err());
        assert!(Target::parse("a\nb").is_err());
        assert!(Target::parse(&"x".repeat(TARGET_BYTES_MAX + 1)).is_err());
        for t in ["tenant:t", "source:s", "route:*.test", "domain:a.b"] {
            assert_eq!(Target::parse(t).unwrap().to_string(), t);
        }
    }

    #[test]
    fn a_suspension_holds_until_resumed() {
        let h = Holds::default();
        assert!(h.check_message("a.example", "c1", "", 5).is_none());
        let h = h.suspend(rule("campaign:c1", 10)).unwrap().unwrap();
        assert!(h.suspend(rule("campaign:c1", 20)).unwrap().is_none());
        assert!(matches!(
            h.check_message("a.example", "c1", "", 50),
            Some(Verdict::Hold(r)) if r.at_unix_ms == 10
        ));
        assert!(h.check_message("a.example", "c2", "", 50).is_none());
        assert!(h.check_scope("yahoo", 50).is_none());
        let h = h.resume(&Target::Campaign("c1".into())).unwrap();
        assert!(h.check_message("a.example", "c1", "", 50).is_none());
        assert!(h.resume(&Target::Campaign("c1".into())).is_none());
    }

    #[test]
    fn a_bounce_takes_only_mail_queued_before_it_and_wins_over_a_hold() {
        let h = Holds::default()
            .suspend(rule("domain:a.example", 1))
            .unwrap()
            .unwrap()
            .bounce(rule("domain:a.example", 100))
            .unwrap();
        assert!(matches!(
            h.check_message("a.example", "c", "t", 100),
            Some(Verdict::Bounce(_))
        ));
        assert!(matches!(
            h.check_message("a.example", "c", "t", 101),
            Some(Verdict::Hold(_))
        ));
        let s = Holds::default().bounce(rule("yahoo", 100)).unwrap();
        assert!(matches!(
            s.check_scope("yahoo", 99),
            Some(Verdict::Bounce(_))
        ));
        assert!(s.check_message("a.example", "c", "t", 1).is_none());
        assert!(s.without_bounces_before(100).is_none());
        assert!(s.without_bounces_before(101).unwrap().is_empty());
    }

    #[test]
    fn holds_survive_a_save_and_a_load() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Holds::load(dir.path()).unwrap(), Holds::default());
        let h = Holds::default()
            .suspend(rule("tenant:acme", 7))
            .unwrap()
            .unwrap()
            .bounce(rule("campaign:x", 9))
            .unwrap();
        h.save(dir.path()).unwrap();
        let back = Holds::load(dir.path()).unwrap();
        assert_eq!(back, h);
        assert!(back.check_message("d", "x", "acme", 9).is_some());
        std::fs::write(holds_path(dir.path()), "{").unwrap();
        assert!(Holds::load(dir.path()).unwrap_err().contains("holds.json"));
    }
}
