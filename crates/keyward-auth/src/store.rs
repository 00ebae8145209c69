//! The team's identities behind one interface ([`AuthState`]), and its
//! default implementation: two files in `<home>/auth/` (0600, replaced
//! atomically, with a format version). A later backend keeps the same
//! state in PostgreSQL for several servers; it answers
//! [`AuthState::authenticate`] from memory kept current by notifications,
//! as this one answers from the files it loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::rate_limit::RateLimiter;
use crate::role::{RateLimit, Role, builtin_roles};
use crate::scope::Scope;
use crate::token::{TokenHash, TokenRecord, TokenValue, hash_token, well_formed};

/// The format this version writes; a newer one is refused, not misread.
const FORMAT_VERSION: u32 = 1;
const TOKENS_FILE: &str = "tokens.toml";
const ROLES_FILE: &str = "roles.toml";

/// Who a token belongs to, once it was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's user.
    pub user: String,
    /// Their role as it is now.
    pub role: Role,
}

/// What a new role or a change to one says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSpec {
    /// Scope words (`evaluate`, `grants.use:NAME`, ...).
    pub scopes: Option<Vec<String>>,
    /// `N/WINDOW`, or `""` for none.
    pub rate_limit: Option<String>,
    /// Free text.
    pub description: Option<String>,
}

/// A token issued or rotated: its record, and its value (to print once).
#[derive(Debug)]
pub struct Issued {
    /// What is stored.
    pub record: TokenRecord,
    /// What the user gets, once.
    pub value: TokenValue,
}

/// The state a keyward server needs about its team: roles, tokens, and
/// checking a presented token against them.
pub trait AuthState {
    /// Every role, built-in ones first.
    fn roles(&self) -> Vec<Role>;
    /// Creates a role of the team's own.
    fn create_role(&mut self, name: &str, spec: &RoleSpec) -> Result<Role, AuthError>;
    /// Changes what a role of the team's own says.
    fn update_role(&mut self, name: &str, spec: &RoleSpec) -> Result<Role, AuthError>;
    /// Deletes a role nobody holds.
    fn delete_role(&mut self, name: &str) -> Result<(), AuthError>;
    /// Every token's record (never a value).
    fn tokens(&self) -> Vec<TokenRecord>;
    /// Issues `user` a token with `role`, expiring after `expires` if set.
    fn issue(
        &mut self,
        user: &str,
        role: &str,
        expires: Option<Duration>,
        description: &str,
        now: SystemTime,
    ) -> Result<Issued, AuthError>;
    /// Ends `user`'s token.
    fn revoke(&mut self, user: &str) -> Result<TokenRecord, AuthError>;
    /// Gives `user` a new token value: same role, same expiry span.
    fn rotate(&mut self, user: &str, now: SystemTime) -> Result<Issued, AuthError>;
    /// Rotates every token.
    fn rotate_all(&mut self, now: SystemTime) -> Result<Vec<Issued>, AuthError>;
    /// The user a presented token belongs to, and their role. Costs the
    /// same whether or not a token matches.
    fn authenticate(&self, presented: &str, now: SystemTime) -> Result<Principal, AuthError>;
    /// Notes an accepted use (kept in memory; written with the next change
    /// or by [`AuthState::persist_usage`]).
    fn record_use(&mut self, user: &str, now: SystemTime);
    /// Writes the last-used times if any changed.
    fn persist_usage(&mut self) -> Result<(), AuthError>;
}

/// Whether `principal` may do what `scope` names, and (with a rate limit
/// on their role) whether they are within it. The one gate every
/// authenticated request passes.
pub fn authorize(
    principal: &Principal,
    scope: &Scope,
    limiter: &RateLimiter,
    now: Instant,
) -> Result<(), AuthError> {
    if !principal.role.allows(scope) {
        return Err(AuthError::ScopeDenied {
            user: principal.user.clone(),
            role: principal.role.name.clone(),
            scope: scope.to_string(),
        });
    }
    if let Some(limit) = principal.role.rate_limit {
        limiter
            .check(&principal.user, limit, now)
            .map_err(|retry_after| AuthError::RateLimited {
                user: principal.user.clone(),
                max: limit.max,
                window: humantime::format_duration(limit.window).to_string(),
                retry_after,
            })?;
    }
    Ok(())
}

/// [`AuthState`] in `<home>/auth/tokens.toml` and `roles.toml`.
#[derive(Debug)]
pub struct FileAuthState {
    dir: PathBuf,
    roles: BTreeMap<String, Role>,
    tokens: Vec<TokenRecord>,
    /// Expiry spans, by user, kept so a rotation keeps the span.
    spans: BTreeMap<String, u64>,
    usage_dirty: bool,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensFile {
    version: u32,
    #[serde(default)]
    tokens: Vec<TokenEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    user: String,
    role: String,
    sha256: String,
    created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires: Option<String>,
    /// Seconds from issue to expiry, kept for rotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_after_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_used: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolesFile {
    version: u32,
    #[serde(default)]
    roles: BTreeMap<String, RoleEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleEntry {
    scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    description: String,
}

use crate::rfc3339;

fn check_name(what: &str, name: &str) -> Result<(), AuthError> {
    keyward_vault::validate_name(name).map_err(|_| {
        AuthError::Invalid(format!(
            "{name:?} is not a {what} name: 1-64 of a-z 0-9 _ . - starting with a letter or \
             digit (e.g. ci-runner)"
        ))
    })
}

fn parse_scopes(words: &[String]) -> Result<Vec<Scope>, AuthError> {
    if words.is_empty() {
        return Err(AuthError::Invalid(format!(
            "a role needs at least one scope: {}",
            Scope::WORDS
        )));
    }
    words
        .iter()
        .map(|w| {
            w.parse()
                .map_err(|e: crate::scope::UnknownScope| AuthError::Invalid(e.to_string()))
        })
        .collect()
}

fn parse_rate_limit(text: &str) -> Result<Option<RateLimit>, AuthError> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|e: crate::role::InvalidRateLimit| AuthError::Invalid(e.to_string()))
}

impl FileAuthState {
    /// The state in `dir` (absent files: no tokens, the built-in roles).
    /// A file this version cannot read is an error naming file and entry:
    /// a server never starts on half its identities.
    pub fn open(dir: &Path) -> Result<Self, AuthError> {
        let mut state = Self {
            dir: dir.to_owned(),
            roles: builtin_roles()
                .into_iter()
                .map(|r| (r.name.clone(), r))
                .collect(),
            tokens: Vec::new(),
            spans: BTreeMap::new(),
            usage_dirty: false,
        };
        if let Some(file) = state.read::<RolesFile>(ROLES_FILE)? {
            for (name, entry) in file.roles {
                let corrupt = |message: String| AuthError::Corrupt {
                    path: state.path(ROLES_FILE),
                    message: format!("roles.{name}: {message}"),
                };
                check_name("role", &name).map_err(|e| corrupt(e.to_string()))?;
                if state.roles.get(&name).is_some_and(|r| r.builtin) {
                    return Err(corrupt("is a built-in role; choose another name".into()));
                }
                let role = Role {
                    scopes: parse_scopes(&entry.scopes).map_err(|e| corrupt(e.to_string()))?,
                    rate_limit: parse_rate_limit(entry.rate_limit.as_deref().unwrap_or(""))
                        .map_err(|e| corrupt(e.to_string()))?,
                    description: entry.description,
                    builtin: false,
                    name: name.clone(),
                };
                state.roles.insert(name, role);
            }
        }
        if let Some(file) = state.read::<TokensFile>(TOKENS_FILE)? {
            let tokens_path = state.path(TOKENS_FILE);
            for (i, entry) in file.tokens.into_iter().enumerate() {
                let corrupt = |message: String| AuthError::Corrupt {
                    path: tokens_path.clone(),
                    message: format!("tokens[{i}] ({}): {message}", entry.user),
                };
                let time = |text: &str| {
                    humantime::parse_rfc3339(text)
                        .map_err(|e| corrupt(format!("time {text:?}: {e}")))
                };
                let mut hash: TokenHash = [0; 32];
                hex::decode_to_slice(&entry.sha256, &mut hash)
                    .map_err(|_| corrupt("sha256 is not 64 hex digits".into()))?;
                check_name("user", &entry.user).map_err(|e| corrupt(e.to_string()))?;
                if !state.roles.contains_key(&entry.role) {
                    return Err(corrupt(format!("no role named {}", entry.role)));
                }
                if entry
                    .expires_after_s
                    .is_some_and(|s| s > u64::from(crate::MAX_EXPIRY_DAYS) * 86_400)
                {
                    return Err(corrupt(
                        "expires_after_s is beyond the longest expiry".into(),
                    ));
                }
                if state.tokens.iter().any(|t| t.user == entry.user) {
                    return Err(corrupt("a second token for one user".into()));
                }
                if let Some(span) = entry.expires_after_s {
                    state.spans.insert(entry.user.clone(), span);
                }
                state.tokens.push(TokenRecord {
                    created: time(&entry.created)?,
                    expires: entry.expires.as_deref().map(time).transpose()?,
                    last_used: entry.last_used.as_deref().map(time).transpose()?,
                    user: entry.user,
                    role: entry.role,
                    hash,
                    description: entry.description,
                });
            }
        }
        Ok(state)
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).display().to_string()
    }

    fn read<T: serde::de::DeserializeOwned + Versioned>(
        &self,
        file: &str,
    ) -> Result<Option<T>, AuthError> {
        let path = self.dir.join(file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(AuthError::Io(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let parsed: T = toml::from_str(&text).map_err(|e| AuthError::Corrupt {
            path: path.display().to_string(),
            message: e.message().to_owned(),
        })?;
        if parsed.version() > FORMAT_VERSION {
            return Err(AuthError::Corrupt {
                path: path.display().to_string(),
                message: format!(
                    "format version {} is newer than this keyward reads ({FORMAT_VERSION}); \
                     upgrade keyward",
                    parsed.version()
                ),
            });
        }
        Ok(Some(parsed))
    }

    fn write(&self, file: &str, text: &str) -> Result<(), AuthError> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|e| AuthError::Io(format!("cannot create {}: {e}", self.dir.display())))?;
        keyward_vault::write_atomic(&self.dir.join(file), text.as_bytes())
            .map_err(|e| AuthError::Io(e.to_string()))
    }

    fn save_roles(&self) -> Result<(), AuthError> {
        let file = RolesFile {
            version: FORMAT_VERSION,
            roles: self
                .roles
                .values()
                .filter(|r| !r.builtin)
                .map(|r| {
                    (
                        r.name.clone(),
                        RoleEntry {
                            scopes: r.scopes.iter().map(ToString::to_string).collect(),
                            rate_limit: r.rate_limit.map(|l| l.to_string()),
                            description: r.description.clone(),
                        },
                    )
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| AuthError::Io(e.to_string()))?;
        self.write(ROLES_FILE, &text)
    }

    fn save_tokens(&mut self) -> Result<(), AuthError> {
        let file = TokensFile {
            version: FORMAT_VERSION,
            tokens: self
                .tokens
                .iter()
                .map(|t| TokenEntry {
                    user: t.user.clone(),
                    role: t.role.clone(),
                    sha256: hex::encode(t.hash),
                    created: rfc3339(t.created),
                    expires: t.expires.map(rfc3339),
                    expires_after_s: self.spans.get(&t.user).copied(),
                    last_used: t.last_used.map(rfc3339),
                    description: t.description.clone(),
                })
                .collect(),
        };
        let text = toml::to_string(&file).map_err(|e| AuthError::Io(e.to_string()))?;
        self.write(TOKENS_FILE, &text)?;
        self.usage_dirty = false;
        Ok(())
    }

    fn known_roles(&self) -> String {
        self.roles.keys().cloned().collect::<Vec<_>>().join(", ")
    }

    fn own_role(&self, name: &str) -> Result<&Role, AuthError> {
        match self.roles.get(name) {
            Some(r) if r.builtin => Err(AuthError::BuiltinRole(name.to_owned())),
            Some(r) => Ok(r),
            None => Err(AuthError::UnknownRole {
                name: name.to_owned(),
                known: self.known_roles(),
            }),
        }
    }

    fn new_record(
        user: &str,
        role: &str,
        span: Option<u64>,
        description: &str,
        now: SystemTime,
    ) -> Issued {
        let value = TokenValue::generate();
        let record = TokenRecord {
            user: user.to_owned(),
            role: role.to_owned(),
            hash: hash_token(value.expose()),
            created: now,
            expires: span.map(|s| now + Duration::from_secs(s)),
            last_used: None,
            description: description.to_owned(),
        };
        Issued { record, value }
    }
}

/// The files' format version, read before anything else is trusted.
trait Versioned {
    fn version(&self) -> u32;
}

impl Versioned for TokensFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl Versioned for RolesFile {
    fn version(&self) -> u32 {
        self.version
    }
}

impl AuthState for FileAuthState {
    fn roles(&self) -> Vec<Role> {
        let mut roles: Vec<Role> = self.roles.values().cloned().collect();
        roles.sort_by_key(|r| (!r.builtin, r.name.clone()));
        roles
    }

    fn create_role(&mut self, name: &str, spec: &RoleSpec) -> Result<Role, AuthError> {
        check_name("role", name)?;
        if self.roles.contains_key(name) {
            return Err(if self.roles[name].builtin {
                AuthError::BuiltinRole(name.to_owned())
            } else {
                AuthError::RoleExists(name.to_owned())
            });
        }
        let role = Role {
            name: name.to_owned(),
            scopes: parse_scopes(spec.scopes.as_deref().unwrap_or_default())?,
            rate_limit: parse_rate_limit(spec.rate_limit.as_deref().unwrap_or(""))?,
            description: spec.description.clone().unwrap_or_default(),
            builtin: false,
        };
        self.roles.insert(name.to_owned(), role.clone());
        if let Err(e) = self.save_roles() {
            self.roles.remove(name);
            return Err(e);
        }
        Ok(role)
    }

    fn update_role(&mut self, name: &str, spec: &RoleSpec) -> Result<Role, AuthError> {
        let mut role = self.own_role(name)?.clone();
        if let Some(scopes) = &spec.scopes {
            role.scopes = parse_scopes(scopes)?;
        }
        if let Some(limit) = &spec.rate_limit {
            role.rate_limit = parse_rate_limit(limit)?;
        }
        if let Some(description) = &spec.description {
            role.description = description.clone();
        }
        let before = self.roles.insert(name.to_owned(), role.clone());
        if let Err(e) = self.save_roles() {
            if let Some(before) = before {
                self.roles.insert(name.to_owned(), before);
            }
            return Err(e);
        }
        Ok(role)
    }

    fn delete_role(&mut self, name: &str) -> Result<(), AuthError> {
        self.own_role(name)?;
        let users: Vec<&str> = self
            .tokens
            .iter()
            .filter(|t| t.role == name)
            .map(|t| t.user.as_str())
            .collect();
        if !users.is_empty() {
            return Err(AuthError::RoleInUse {
                role: name.to_owned(),
                users: users.join(", "),
            });
        }
        let before = self.roles.remove(name);
        if let Err(e) = self.save_roles() {
            if let Some(before) = before {
                self.roles.insert(name.to_owned(), before);
            }
            return Err(e);
        }
        Ok(())
    }

    fn tokens(&self) -> Vec<TokenRecord> {
        self.tokens.clone()
    }

    fn issue(
        &mut self,
        user: &str,
        role: &str,
        expires: Option<Duration>,
        description: &str,
        now: SystemTime,
    ) -> Result<Issued, AuthError> {
        check_name("user", user)?;
        if !self.roles.contains_key(role) {
            return Err(AuthError::UnknownRole {
                name: role.to_owned(),
                known: self.known_roles(),
            });
        }
        if self.tokens.iter().any(|t| t.user == user) {
            return Err(AuthError::UserHasToken(user.to_owned()));
        }
        let longest = Duration::from_secs(u64::from(crate::MAX_EXPIRY_DAYS) * 86_400);
        if expires.is_some_and(|e| e.is_zero() || e > longest) {
            return Err(AuthError::Invalid(format!(
                "a token expires after 1 to {} days",
                crate::MAX_EXPIRY_DAYS
            )));
        }
        let span = expires.map(|e| e.as_secs().max(1));
        let issued = Self::new_record(user, role, span, description, now);
        self.tokens.push(issued.record.clone());
        if let Some(span) = span {
            self.spans.insert(user.to_owned(), span);
        }
        if let Err(e) = self.save_tokens() {
            self.tokens.retain(|t| t.user != user);
            self.spans.remove(user);
            return Err(e);
        }
        Ok(issued)
    }

    fn revoke(&mut self, user: &str) -> Result<TokenRecord, AuthError> {
        let at = self
            .tokens
            .iter()
            .position(|t| t.user == user)
            .ok_or_else(|| AuthError::NoToken(user.to_owned()))?;
        let record = self.tokens.remove(at);
        let span = self.spans.remove(user);
        if let Err(e) = self.save_tokens() {
            self.tokens.insert(at, record);
            if let Some(span) = span {
                self.spans.insert(user.to_owned(), span);
            }
            return Err(e);
        }
        Ok(record)
    }

    fn rotate(&mut self, user: &str, now: SystemTime) -> Result<Issued, AuthError> {
        let at = self
            .tokens
            .iter()
            .position(|t| t.user == user)
            .ok_or_else(|| AuthError::NoToken(user.to_owned()))?;
        let old = self.tokens[at].clone();
        let issued = Self::new_record(
            user,
            &old.role,
            self.spans.get(user).copied(),
            &old.description,
            now,
        );
        self.tokens[at] = issued.record.clone();
        if let Err(e) = self.save_tokens() {
            self.tokens[at] = old;
            return Err(e);
        }
        Ok(issued)
    }

    fn rotate_all(&mut self, now: SystemTime) -> Result<Vec<Issued>, AuthError> {
        let before = self.tokens.clone();
        let issued: Vec<Issued> = before
            .iter()
            .map(|t| {
                Self::new_record(
                    &t.user,
                    &t.role,
                    self.spans.get(&t.user).copied(),
                    &t.description,
                    now,
                )
            })
            .collect();
        self.tokens = issued.iter().map(|i| i.record.clone()).collect();
        if let Err(e) = self.save_tokens() {
            self.tokens = before;
            return Err(e);
        }
        Ok(issued)
    }

    fn authenticate(&self, presented: &str, now: SystemTime) -> Result<Principal, AuthError> {
        // Hashed and compared with every stored hash whatever it is, so
        // an unknown or malformed token costs what a good one does.
        let hash = hash_token(presented);
        let mut found = None;
        for record in &self.tokens {
            if aws_lc_rs::constant_time::verify_slices_are_equal(&record.hash, &hash).is_ok() {
                found = Some(record);
            }
        }
        let record = match found {
            Some(record) if well_formed(presented) => record,
            _ => return Err(AuthError::TokenInvalid),
        };
        if let Some(at) = record.expires
            && now >= at
        {
            return Err(AuthError::TokenExpired {
                user: record.user.clone(),
                at,
            });
        }
        let role = self
            .roles
            .get(&record.role)
            .cloned()
            .ok_or(AuthError::TokenInvalid)?;
        Ok(Principal {
            user: record.user.clone(),
            role,
        })
    }

    fn record_use(&mut self, user: &str, now: SystemTime) {
        if let Some(record) = self.tokens.iter_mut().find(|t| t.user == user) {
            // Kept to the second: a busy user changes it once a second.
            let second = |t: SystemTime| {
                t.duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            };
            if record.last_used.is_none_or(|t| second(t) != second(now)) {
                record.last_used = Some(now);
                self.usage_dirty = true;
            }
        }
    }

    fn persist_usage(&mut self) -> Result<(), AuthError> {
        if self.usage_dirty {
            self.save_tokens()?;
        }
        Ok(())
    }
}
