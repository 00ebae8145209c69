//! Roles: a name, its scopes and an optional per-user rate limit. Three
//! are built in (`admin`, `member`, `runner`); the rest are the team's own.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::scope::Scope;

/// A role as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// 1-64 of a-z 0-9 _ . - starting with a letter or digit.
    pub name: String,
    /// What its users may do.
    pub scopes: Vec<Scope>,
    /// At most this many requests per user in any window of this length.
    pub rate_limit: Option<RateLimit>,
    /// Free text.
    pub description: String,
    /// Built in: cannot be changed or deleted.
    pub builtin: bool,
}

impl Role {
    /// Whether the role's scopes cover `needed`.
    pub fn allows(&self, needed: &Scope) -> bool {
        self.scopes.iter().any(|held| held.covers(needed))
    }
}

/// The roles every keyward has.
pub fn builtin_roles() -> Vec<Role> {
    let role = |name: &str, scopes: Vec<Scope>, description: &str| Role {
        name: name.to_owned(),
        scopes,
        rate_limit: None,
        description: description.to_owned(),
        builtin: true,
    };
    vec![
        role(
            "admin",
            vec![Scope::Admin],
            "everything: tokens, roles, secrets, the vault, the daemon",
        ),
        role(
            "member",
            vec![
                Scope::Evaluate,
                Scope::RunsCreate,
                Scope::RunsRead,
                Scope::GrantsUse(None),
                Scope::PolicyRead,
                Scope::AuditRead,
            ],
            "a person on the team: decisions, runs with any grant, reading policy and evidence",
        ),
        role(
            "runner",
            vec![
                Scope::Evaluate,
                Scope::RunsCreate,
                Scope::RunsRead,
                Scope::GrantsUse(None),
            ],
            "a CI runner or agent host: decisions and runs with any grant",
        ),
    ]
}

/// `N/WINDOW`, e.g. `120/60s`: at most N requests per user in any window
/// of that length (a sliding window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in a window (at least 1).
    pub max: u32,
    /// The window (at least a second).
    pub window: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            self.max,
            humantime::format_duration(self.window)
        )
    }
}

/// The most requests a rate limit may allow per window.
const MAX_REQUESTS: u32 = 1_000_000;
/// The longest window.
const MAX_WINDOW: Duration = Duration::from_secs(7 * 86_400);

/// A rate limit that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid rate limit {0:?}: expected REQUESTS/WINDOW with 1 to 1000000 requests and a window \
     of 1s to 7days (e.g. 120/60s or 1000/1h)"
)]
pub struct InvalidRateLimit(pub String);

impl FromStr for RateLimit {
    type Err = InvalidRateLimit;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidRateLimit(text.to_owned());
        let (max, window) = text.split_once('/').ok_or_else(invalid)?;
        let max: u32 = max.trim().parse().map_err(|_| invalid())?;
        let window = humantime::parse_duration(window.trim()).map_err(|_| invalid())?;
        // Bounded: each user's window keeps up to `max` instants.
        if !(1..=MAX_REQUESTS).contains(&max)
            || window < Duration::from_secs(1)
            || window > MAX_WINDOW
        {
            return Err(invalid());
        }
        Ok(Self { max, window })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse_and_print() {
        let limit: RateLimit = "120/60s".parse().unwrap();
        assert_eq!(limit.max, 120);
        assert_eq!(limit.window, Duration::from_secs(60));
        assert_eq!(limit.to_string(), "120/1m");
        assert_eq!(
            "1000/1h".parse::<RateLimit>().unwrap().to_string(),
            "1000/1h"
        );
        for bad in [
            "",
            "120",
            "0/60s",
            "120/0s",
            "120/500ms",
            "-1/60s",
            "x/60s",
            "120/soon",
            "4294967295/1s",
            "10/100000000years",
        ] {
            let err = bad.parse::<RateLimit>().unwrap_err();
            assert!(err.to_string().contains("e.g. 120/60s"), "{bad}: {err}");
        }
    }

    #[test]
    fn builtin_roles_hold_what_they_say() {
        let roles = builtin_roles();
        let get = |name: &str| roles.iter().find(|r| r.name == name).unwrap();
        assert!(get("admin").allows(&Scope::SecretsWrite));
        assert!(get("member").allows(&Scope::AuditRead));
        assert!(!get("member").allows(&Scope::SecretsWrite));
        assert!(get("runner").allows(&Scope::GrantsUse(Some("github".into()))));
        assert!(!get("runner").allows(&Scope::PolicyRead));
        assert!(!get("runner").allows(&Scope::Admin));
    }
}
