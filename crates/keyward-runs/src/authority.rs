//! The run authority: what each run may use, frozen when it was created,
//! and its resolved credentials, cached and dropped (zeroized) when the
//! run goes. The proxy asks it about every request (`RunAuthority`).
//! It holds the handles it needs (the registry, the config, the resolver),
//! not the daemon's state, so nothing points back at what owns it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use keyward_evidence::KnownSecrets;
use keyward_policy::Policy;
use keyward_proxy::{AllowRule, Credential, RunAuthority, RunContext, Withheld};
use keyward_vault::{KnownValues, ResolveError, Resolver};

use crate::activity::Activity;
use crate::frozen::{Frozen, FrozenError};
use crate::{FrozenAuthority, Registry, RunRecord};
use keyward_config::LoadedConfig;

/// What the authority reads, shared with the daemon's state: the config
/// and resolver are replaced in place on reload.
#[derive(Clone)]
pub struct Live {
    pub runs: Arc<Registry>,
    pub activity: Arc<Activity>,
    pub config: Arc<RwLock<Arc<LoadedConfig>>>,
    pub resolver: Arc<RwLock<Arc<Resolver>>>,
    pub vault_values: KnownValues,
    /// Where runs' policy texts are kept (`<home>/policies`).
    pub policy_store: std::path::PathBuf,
}

impl Live {
    fn config(&self) -> Arc<LoadedConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn resolver(&self) -> Arc<Resolver> {
        self.resolver
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Resolved credentials per run, built on first use and dropped (zeroized)
/// when the run goes.
pub struct Authority {
    live: Live,
    /// run id -> (when resolved, the vault values it was resolved against,
    /// context). Re-resolved after `backends.cache_ttl`, so rotated `file:`,
    /// `cmd:` and `openbao:` secrets reach running runs, and at once after
    /// any vault change (set, rm, rollback, seal, unseal).
    contexts: Mutex<HashMap<String, CachedContext>>,
    /// run id -> what the run was created with: runs this daemon created,
    /// or whose sealed record it checked. A run not here gets nothing.
    frozen: Mutex<HashMap<String, Arc<Frozen>>>,
    /// The secret values of the cached contexts and the vault as one
    /// matcher (every record is redacted against them), with the vault
    /// values it was built from; dropped when a context's secrets change.
    known: Mutex<Option<BuiltSecrets>>,
}

/// The vault values a [`KnownSecrets`] was built with, and it.
type BuiltSecrets = (Arc<Vec<secrecy::SecretString>>, Arc<KnownSecrets>);

struct CachedContext {
    at: std::time::Instant,
    vault: Arc<Vec<secrecy::SecretString>>,
    context: Arc<RunContext>,
}

impl Authority {
    pub fn new(live: Live) -> Self {
        Self {
            live,
            contexts: Mutex::new(HashMap::new()),
            frozen: Mutex::new(HashMap::new()),
            known: Mutex::new(None),
        }
    }

    fn frozen_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Frozen>>> {
        self.frozen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Freezes a new run's authority from the current config (its
    /// policy's text kept in the policy store): what `adopt` then holds.
    pub fn freeze(
        &self,
        grants: &[String],
        policy: Option<&str>,
    ) -> Result<(FrozenAuthority, Arc<Frozen>), FrozenError> {
        crate::frozen::freeze(&self.live.config(), grants, policy, &self.live.policy_store)
    }

    /// Holds a run's authority: one this daemon froze, or one restored from
    /// a record whose seal was checked.
    pub fn adopt(&self, run_id: &str, frozen: Arc<Frozen>) {
        self.frozen_map().insert(run_id.to_owned(), frozen);
    }

    /// Rebuilds a restored run's authority from its checked record.
    pub fn restore(&self, run: &RunRecord) -> Result<(), FrozenError> {
        let frozen = crate::frozen::restore(run, &self.live.policy_store)?;
        self.adopt(&run.id, frozen);
        Ok(())
    }

    /// Whether `run_id`'s authority is held (created here, or checked).
    pub fn trusts(&self, run_id: &str) -> bool {
        self.frozen_map().contains_key(run_id)
    }

    /// The runs whose authority is held.
    pub fn trusted(&self) -> Vec<String> {
        self.frozen_map().keys().cloned().collect()
    }

    /// The policy deciding for `run`: the one it was created with (its own
    /// file or the configured policy), kept for the run's life; a reload
    /// does not change it. A run whose record is not checked yet is
    /// decided by a policy that blocks everything.
    pub fn policy_for(&self, _config: &LoadedConfig, run: &RunRecord) -> Arc<Policy> {
        match self.frozen_map().get(&run.id) {
            Some(frozen) => frozen.policy.clone(),
            None => unverified_policy(),
        }
    }

    fn contexts(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedContext>> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secret values the daemon holds right now (live runs' resolved
    /// credentials and the vault's values), as one matcher that evidence
    /// redaction runs over every record. Built again only after they
    /// changed, so a record costs the same with one live run or a thousand.
    pub fn known_secrets(&self) -> Arc<KnownSecrets> {
        use secrecy::ExposeSecret as _;
        let vault = self.live.vault_values.current();
        // Lock order: `known`, then `contexts` (nothing takes them the
        // other way round), so a change made while this builds drops the
        // result right after it is stored.
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((built_from, secrets)) = known.as_ref()
            && Arc::ptr_eq(built_from, &vault)
        {
            return secrets.clone();
        }
        let contexts = self.contexts();
        // Run tokens too, as the child holds them and upper-cased: a token
        // glued into a longer word or written in capitals is found as well
        // (the raw token is also matched through the registry's hashes).
        let tokens: Vec<zeroize::Zeroizing<String>> = contexts
            .values()
            .filter_map(|cached| cached.context.run_token())
            .flat_map(|t| {
                let t = t.expose_secret();
                [t.to_owned(), t.to_ascii_uppercase()]
            })
            .map(zeroize::Zeroizing::new)
            .collect();
        let secrets = Arc::new(KnownSecrets::new(
            contexts
                .values()
                .flat_map(|cached| cached.context.credentials.iter())
                .map(|c| c.secret.expose_secret())
                .chain(vault.iter().map(|s| s.expose_secret()))
                .chain(tokens.iter().map(|t| t.as_str())),
        ));
        drop(contexts);
        *known = Some((vault, secrets.clone()));
        secrets
    }

    /// After a change to the cached contexts' secrets.
    fn secrets_changed(&self) {
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// What `run_id` was created with, if this daemon knows it.
    pub fn frozen_of(&self, run_id: &str) -> Option<Arc<Frozen>> {
        self.frozen_map().get(run_id).cloned()
    }

    /// Forgets a run entirely.
    pub fn forget(&self, run_id: &str) {
        self.contexts().remove(run_id);
        self.frozen_map().remove(run_id);
        self.secrets_changed();
    }

    /// Forgets every run's resolved credentials (config reload): they are
    /// resolved again, narrowed by the new config, on the next request.
    pub fn forget_credentials(&self) {
        self.contexts().clear();
        self.secrets_changed();
    }

    /// Resolves a run's grants: each as the run was created with it, less
    /// the hosts the current config no longer gives it; a grant the config
    /// no longer has is left out. A grant that is gone or whose secret does
    /// not resolve is returned with why; the context is then not cached, so
    /// the next request tries again.
    pub async fn build(&self, run: &RunRecord) -> (RunContext, Vec<(String, ResolveError)>) {
        let config = self.live.config();
        let resolver = self.live.resolver();
        let Some(frozen) = self.frozen_map().get(&run.id).cloned() else {
            // Restored, and its record not checked yet (the vault is
            // sealed): nothing gets through until it is.
            let ctx = RunContext::new(
                run.id.clone(),
                keyward_api::Network::Strict,
                Vec::new(),
                Vec::new(),
            )
            .with_policy(unverified_policy());
            let failure = ResolveError::Sealed;
            return (ctx, vec![("*".to_owned(), failure)]);
        };
        let mut credentials = Vec::new();
        let mut withheld = Vec::new();
        let mut failures = Vec::new();
        for name in &run.grants {
            let (Some(grant), Some(now)) = (frozen.grants.get(name), config.grants.get(name))
            else {
                tracing::warn!(run = run.id, grant = name, "grant no longer exists");
                failures.push((
                    name.clone(),
                    ResolveError::Missing(format!("grant {name} no longer exists")),
                ));
                continue;
            };
            let hosts: Vec<_> = grant
                .hosts
                .iter()
                .filter(|h| now.hosts.contains(h))
                .cloned()
                .collect();
            if hosts.is_empty() {
                tracing::warn!(
                    run = run.id,
                    grant = name,
                    "grant has none of its hosts left"
                );
                continue;
            }
            match resolver.resolve(&grant.secret).await {
                Ok(secret) => credentials.push(Credential {
                    grant: name.clone(),
                    hosts,
                    inject: grant.inject.clone(),
                    secret,
                    placeholder: grant
                        .placeholder_env
                        .as_ref()
                        .and_then(|var| run.placeholders.get(var).cloned()),
                    plaintext: grant.plaintext,
                    substitute_body: grant.substitute_body,
                }),
                Err(e) => {
                    tracing::warn!(run = run.id, grant = name, "secret does not resolve: {e}");
                    withheld.push(Withheld {
                        grant: name.clone(),
                        hosts,
                        sealed: e == ResolveError::Sealed,
                    });
                    failures.push((name.clone(), e));
                }
            }
        }
        let allow = run
            .allow
            .iter()
            .filter_map(|a| AllowRule::parse(a).ok())
            .collect();
        let ctx = RunContext::new(run.id.clone(), run.network, allow, credentials)
            .with_policy(frozen.policy.clone())
            .with_withheld(withheld)
            .with_runner(run.runner.as_ref().map(|claims| claims.to_json()));
        (ctx, failures)
    }
}

/// What decides for a restored run whose sealed record has not been
/// checked yet (the vault is sealed): every request is blocked.
fn unverified_policy() -> Arc<Policy> {
    static POLICY: std::sync::OnceLock<Arc<Policy>> = std::sync::OnceLock::new();
    POLICY
        .get_or_init(|| {
            let closed = "[policy]\nid = \"run-unverified\"\ndefault = \"block\"\n\
                          default_rule_id = \"run.unverified\"\n\
                          default_reason = \"the run was restored after a daemon restart and its record is checked once the vault is unsealed (keyward vault unseal)\"\n";
            Arc::new(
                Policy::from_toml(closed, "fail-closed policy")
                    .expect("the fail-closed policy compiles"),
            )
        })
        .clone()
}

impl RunAuthority for Authority {
    fn authenticate<'a>(
        &'a self,
        token: &'a str,
    ) -> Pin<Box<dyn Future<Output = Option<Arc<RunContext>>> + Send + 'a>> {
        Box::pin(async move {
            let live = &self.live;
            let id = live.runs.id_for_token(token)?;
            live.activity.touch();
            let ttl = live.config().config.backends.cache_ttl.unwrap_or_default();
            let vault = live.vault_values.current();
            if let Some(cached) = self.contexts().get(&id)
                && cached.at.elapsed() < ttl
                && Arc::ptr_eq(&cached.vault, &vault)
            {
                return Some(cached.context.clone());
            }
            let run = live.runs.get(&id)?;
            let (ctx, failures) = self.build(&run).await;
            // The token is known here only (the registry keeps its hash):
            // the context keeps it from going upstream or on record.
            let ctx = Arc::new(ctx.with_token(token));
            if failures.is_empty() {
                let replaced = self.contexts().insert(
                    run.id.clone(),
                    CachedContext {
                        at: std::time::Instant::now(),
                        vault,
                        context: ctx.clone(),
                    },
                );
                // Re-resolved after its TTL, usually to the same values.
                if replaced.is_none_or(|old| !same_secrets(&old.context, &ctx)) {
                    self.secrets_changed();
                }
            }
            Some(ctx)
        })
    }

    fn credential_rejected(&self, run_id: &str, grants: &[String]) {
        let frozen = self.frozen_map().get(run_id).cloned();
        let resolver = self.live.resolver();
        for name in grants {
            if let Some(grant) = frozen.as_ref().and_then(|f| f.grants.get(name)) {
                resolver.forget(&grant.secret);
            }
        }
        self.contexts().remove(run_id);
        self.secrets_changed();
        tracing::info!(
            run = run_id,
            grants = grants.join(","),
            "upstream answered 401: the grants' secrets are resolved again on the next request"
        );
    }
}

/// Whether two contexts hold the same secret values.
fn same_secrets(a: &RunContext, b: &RunContext) -> bool {
    use secrecy::ExposeSecret as _;
    a.credentials.len() == b.credentials.len()
        && a.credentials
            .iter()
            .zip(&b.credentials)
            .all(|(x, y)| x.secret.expose_secret() == y.secret.expose_secret())
}
