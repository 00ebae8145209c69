//! The run authority: what each run may use, frozen when it was created,
//! and its resolved credentials, cached and dropped (zeroized) when the
//! run goes. The proxy asks it about every request (`RunAuthority`).
//! It holds the handles it needs (the registry, the config, the resolver),
//! not the daemon's state, so nothing points back at what owns it.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use keyward_evidence::KnownSecrets;
use keyward_policy::Policy;
use keyward_proxy::{AllowRule, Credential, RunAuthority, RunContext, Withheld};
use keyward_vault::{KnownValues, ResolveError, Resolver};

use crate::config::LoadedConfig;
use crate::grants::Grant;
use crate::runs::{Registry, RunRecord};
use crate::server::Activity;

/// What the authority reads, shared with the daemon's state: the config
/// and resolver are replaced in place on reload.
#[derive(Clone)]
pub(crate) struct Live {
    pub runs: Arc<Registry>,
    pub activity: Arc<Activity>,
    pub config: Arc<RwLock<Arc<LoadedConfig>>>,
    pub resolver: Arc<RwLock<Arc<Resolver>>>,
    pub vault_values: KnownValues,
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

/// A run's authority as it was when the run was created: its grants (with
/// their hosts, injection and secret reference) and its policy. A reload
/// can narrow it (a grant removed, a host dropped) but never widen it.
struct Frozen {
    grants: BTreeMap<String, Grant>,
    policy: Arc<Policy>,
}

/// Resolved credentials per run, built on first use and dropped (zeroized)
/// when the run goes.
pub(crate) struct Authority {
    live: Live,
    /// run id -> (when resolved, the vault values it was resolved against,
    /// context). Re-resolved after `backends.cache_ttl`, so rotated `file:`,
    /// `cmd:` and `openbao:` secrets reach running runs, and at once after
    /// any vault change (set, rm, rollback, seal, unseal).
    contexts: Mutex<HashMap<String, CachedContext>>,
    /// run id -> what the run was created with.
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
    pub(crate) fn new(live: Live) -> Self {
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

    /// What `run` was created with; frozen now from the current config if
    /// it has not been yet (a run created before this daemon started).
    fn frozen_for(&self, config: &LoadedConfig, run: &RunRecord) -> Arc<Frozen> {
        if let Some(frozen) = self.frozen_map().get(&run.id) {
            return frozen.clone();
        }
        let frozen = Arc::new(Frozen {
            grants: run
                .grants
                .iter()
                .filter_map(|name| Some((name.clone(), config.grants.get(name)?.clone())))
                .collect(),
            policy: match &run.policy {
                Some(path) => compile_run_policy(run, path),
                None => config.policy.clone(),
            },
        });
        self.frozen_map()
            .entry(run.id.clone())
            .or_insert(frozen)
            .clone()
    }

    /// The policy deciding for `run`: the one it was created with (its own
    /// file or the configured policy), compiled once and kept for the
    /// run's life; a reload does not change it.
    pub(crate) fn policy_for(&self, config: &LoadedConfig, run: &RunRecord) -> Arc<Policy> {
        self.frozen_for(config, run).policy.clone()
    }

    fn contexts(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedContext>> {
        self.contexts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The secret values the daemon holds right now (live runs' resolved
    /// credentials and the vault's values), as one matcher that evidence
    /// redaction runs over every record. Built again only after they
    /// changed, so a record costs the same with one live run or a thousand.
    pub(crate) fn known_secrets(&self) -> Arc<KnownSecrets> {
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

    /// Forgets a run entirely.
    pub(crate) fn forget(&self, run_id: &str) {
        self.contexts().remove(run_id);
        self.frozen_map().remove(run_id);
        self.secrets_changed();
    }

    /// Forgets every run's resolved credentials (config reload): they are
    /// resolved again, narrowed by the new config, on the next request.
    pub(crate) fn forget_credentials(&self) {
        self.contexts().clear();
        self.secrets_changed();
    }

    /// Resolves a run's grants: each as the run was created with it, less
    /// the hosts the current config no longer gives it; a grant the config
    /// no longer has is left out. A grant that is gone or whose secret does
    /// not resolve is returned with why; the context is then not cached, so
    /// the next request tries again.
    pub(crate) async fn build(&self, run: &RunRecord) -> (RunContext, Vec<(String, ResolveError)>) {
        let config = self.live.config();
        let resolver = self.live.resolver();
        let frozen = self.frozen_for(&config, run);
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

/// Compiles a run's own policy file. One that no longer loads fails
/// closed: every request is blocked, with the reason in the log and in the
/// block message.
fn compile_run_policy(run: &RunRecord, path: &str) -> Arc<Policy> {
    match Policy::from_file(std::path::Path::new(path)) {
        Ok(policy) => Arc::new(policy),
        Err(e) => {
            tracing::error!(
                run = run.id,
                "the run's policy no longer loads, so its requests are blocked: {e}"
            );
            let closed = "[policy]\nid = \"run-policy-invalid\"\ndefault = \"block\"\n\
                          default_rule_id = \"run.policy.invalid\"\n\
                          default_reason = \"the run's policy file no longer loads; see the daemon log\"\n";
            Arc::new(
                Policy::from_toml(closed, "fail-closed policy")
                    .expect("the fail-closed policy compiles"),
            )
        }
    }
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
