//! What a role lets its users do, one scope at a time.

use std::fmt;
use std::str::FromStr;

/// One permission. `admin` holds every other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Ask the policy engine for decisions.
    Evaluate,
    /// Create, renew and end runs.
    RunsCreate,
    /// See runs.
    RunsRead,
    /// Give a run this grant (`grants.use:NAME`), or any grant
    /// (`grants.use:*`, `None`).
    GrantsUse(Option<String>),
    /// Store and remove secrets.
    SecretsWrite,
    /// Read the policy and the grants.
    PolicyRead,
    /// Read the evidence log.
    AuditRead,
    /// Everything, including tokens, roles, the vault and the daemon.
    Admin,
}

impl Scope {
    /// Every scope word, for messages.
    pub const WORDS: &'static str = "evaluate, runs.create, runs.read, grants.use:NAME, \
                                     grants.use:*, secrets.write, policy.read, audit.read, admin";

    /// Whether holding `self` covers `needed`.
    pub fn covers(&self, needed: &Scope) -> bool {
        match (self, needed) {
            (Scope::Admin, _) => true,
            (Scope::GrantsUse(None), Scope::GrantsUse(_)) => true,
            (held, needed) => held == needed,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Evaluate => f.write_str("evaluate"),
            Scope::RunsCreate => f.write_str("runs.create"),
            Scope::RunsRead => f.write_str("runs.read"),
            Scope::GrantsUse(None) => f.write_str("grants.use:*"),
            Scope::GrantsUse(Some(grant)) => write!(f, "grants.use:{grant}"),
            Scope::SecretsWrite => f.write_str("secrets.write"),
            Scope::PolicyRead => f.write_str("policy.read"),
            Scope::AuditRead => f.write_str("audit.read"),
            Scope::Admin => f.write_str("admin"),
        }
    }
}

/// A scope word that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scope {0:?}: expected one of {words}", words = Scope::WORDS)]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "evaluate" => Scope::Evaluate,
            "runs.create" => Scope::RunsCreate,
            "runs.read" => Scope::RunsRead,
            "grants.use:*" => Scope::GrantsUse(None),
            "secrets.write" => Scope::SecretsWrite,
            "policy.read" => Scope::PolicyRead,
            "audit.read" => Scope::AuditRead,
            "admin" => Scope::Admin,
            _ => match text.strip_prefix("grants.use:") {
                Some(grant) if keyward_vault::validate_name(grant).is_ok() => {
                    Scope::GrantsUse(Some(grant.to_owned()))
                }
                _ => return Err(UnknownScope(text.to_owned())),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_odd_ones_are_refused() {
        for word in [
            "evaluate",
            "runs.create",
            "runs.read",
            "grants.use:*",
            "grants.use:github",
            "secrets.write",
            "policy.read",
            "audit.read",
            "admin",
        ] {
            assert_eq!(word.parse::<Scope>().unwrap().to_string(), word);
        }
        for odd in [
            "",
            "Admin",
            "grants.use:",
            "grants.use:GitHub",
            "grants.use:a b",
            "grants.use:**",
            "runs",
            "runs.*",
        ] {
            let err = odd.parse::<Scope>().unwrap_err();
            assert!(err.to_string().contains("expected one of"), "{err}");
        }
    }

    #[test]
    fn admin_covers_all_and_a_wildcard_covers_every_grant_only() {
        let github = Scope::GrantsUse(Some("github".into()));
        assert!(Scope::Admin.covers(&Scope::SecretsWrite));
        assert!(Scope::Admin.covers(&github));
        assert!(Scope::GrantsUse(None).covers(&github));
        assert!(!Scope::GrantsUse(None).covers(&Scope::Evaluate));
        assert!(github.covers(&github));
        assert!(!github.covers(&Scope::GrantsUse(Some("openai".into()))));
        assert!(!github.covers(&Scope::GrantsUse(None)));
        assert!(!Scope::RunsRead.covers(&Scope::RunsCreate));
    }
}
