//! Grants: which secret goes to which hosts, and how it is injected.
//! Built-in presets are usable by name with no config; a `[grants.NAME]`
//! table overrides a preset of that name field by field, or defines a new
//! grant (optionally starting from `preset = "..."`).

use std::collections::BTreeMap;

use keyward_proxy::{GrantHost, Injection};
use keyward_vault::SecretRef;
use serde::{Deserialize, Serialize};

/// `[grants.NAME]` as written.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantConfig {
    /// Start from this built-in preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// Secret reference, e.g. `vault:github-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Host patterns: `api.github.com` or `*.githubusercontent.com`,
    /// optionally with a port (`api.example.com:8443`); without one, 443.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<Vec<String>>,
    /// How the secret is injected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inject: Option<InjectConfig>,
    /// The child gets this variable set to a placeholder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placeholder_env: Option<String>,
    /// The secret may also go over plain HTTP (and a host without a port
    /// then covers 80 too). Off: injection is TLS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plaintext: Option<bool>,
    /// The placeholder is swapped in request bodies too. Off: a body that
    /// a granted API stores and returns could otherwise carry the secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub substitute_body: Option<bool>,
    /// `keyward run --base-url` sets this variable to the grant's
    /// plain-HTTP endpoint on loopback (e.g. `ANTHROPIC_BASE_URL`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url_env: Option<String>,
    /// A path the base URL ends with, where the tool expects one (`/v1`
    /// for OpenAI's SDKs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url_path: Option<String>,
    /// Globs a run's verified runner claims must match for the run to get
    /// this grant, e.g. `{ repository = "acme/*", ref = "refs/heads/main" }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_runner: Option<BTreeMap<String, String>>,
    /// The hosts may name a public suffix (`com`, `*.co.uk`, `*.github.io`):
    /// the secret then goes to every site registered under it. Refused
    /// unless set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_suffix: Option<bool>,
}

/// `inject = { header = "...", format = "..." }`, `{ basic = { username = "..." } }`
/// or `{ query = "..." }`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectConfig {
    /// Header name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Header value with `{secret}`; default `{secret}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// HTTP basic auth with the secret as password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicConfig>,
    /// Query parameter name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// `basic = { username = "..." }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// The user name sent with the secret.
    pub username: String,
}

/// Where a grant came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantSource {
    /// Built in, unchanged.
    Preset,
    /// Defined or overridden in the config file.
    Config,
}

impl GrantSource {
    /// `preset` or `config`.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantSource::Preset => "preset",
            GrantSource::Config => "config",
        }
    }
}

/// A validated grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Its name.
    pub name: String,
    /// Preset or config.
    pub source: GrantSource,
    /// The secret reference.
    pub secret: SecretRef,
    /// Where the secret may go.
    pub hosts: Vec<GrantHost>,
    /// How.
    pub inject: Injection,
    /// The child's placeholder variable, if any.
    pub placeholder_env: Option<String>,
    /// Whether the secret may go over plain HTTP.
    pub plaintext: bool,
    /// Whether the placeholder is swapped in request bodies.
    pub substitute_body: bool,
    /// The variable `keyward run --base-url` sets to the grant's endpoint,
    /// and the path that URL ends with.
    pub base_url: Option<(String, String)>,
    /// Globs (claim name to pattern) a run's verified runner claims must
    /// match for the run to get this grant.
    pub require_runner: BTreeMap<String, String>,
    /// Whether a host names a public suffix (allowed by `public_suffix =
    /// true`, or a preset's own host).
    pub public_suffix: bool,
}

impl Grant {
    /// The grant as one explicit config table (no preset, every field
    /// set): what a run keeps of it, so the grant can be rebuilt exactly
    /// after the config changed.
    pub fn frozen(&self) -> GrantConfig {
        let inject = match &self.inject {
            Injection::Header { name, format } => InjectConfig {
                header: Some(name.clone()),
                format: Some(format.clone()),
                ..Default::default()
            },
            Injection::Basic { username } => InjectConfig {
                basic: Some(BasicConfig {
                    username: username.clone(),
                }),
                ..Default::default()
            },
            Injection::Query { param } => InjectConfig {
                query: Some(param.clone()),
                ..Default::default()
            },
        };
        GrantConfig {
            preset: None,
            secret: Some(self.secret.to_string()),
            hosts: Some(self.hosts.iter().map(ToString::to_string).collect()),
            inject: Some(inject),
            placeholder_env: self.placeholder_env.clone(),
            plaintext: Some(self.plaintext),
            substitute_body: Some(self.substitute_body),
            base_url_env: self.base_url.as_ref().map(|(var, _)| var.clone()),
            base_url_path: self
                .base_url
                .as_ref()
                .map(|(_, path)| path.clone())
                .filter(|p| !p.is_empty()),
            require_runner: Some(self.require_runner.clone()),
            public_suffix: self.public_suffix.then_some(true),
        }
    }

    /// Rebuilds a grant from what [`Grant::frozen`] made.
    pub fn thaw(name: &str, table: &GrantConfig) -> Result<Self, GrantError> {
        build(name, table, None, GrantSource::Config)
    }
}

/// The built-in presets, as config tables.
pub fn presets() -> BTreeMap<&'static str, GrantConfig> {
    let header = |name: &str, format: &str| InjectConfig {
        header: Some(name.to_owned()),
        format: Some(format.to_owned()),
        ..Default::default()
    };
    let preset =
        |hosts: &[&str], inject: InjectConfig, env: &str, base: (&str, &str)| GrantConfig {
            base_url_env: (!base.0.is_empty()).then(|| base.0.to_owned()),
            base_url_path: (!base.1.is_empty()).then(|| base.1.to_owned()),
            preset: None,
            secret: None,
            hosts: Some(hosts.iter().map(|h| (*h).to_owned()).collect()),
            inject: Some(inject),
            placeholder_env: Some(env.to_owned()),
            ..GrantConfig::default()
        };
    BTreeMap::from([
        (
            "github",
            preset(
                &["api.github.com", "github.com", "*.githubusercontent.com"],
                header("Authorization", "Bearer {secret}"),
                "GH_TOKEN",
                ("GITHUB_API_URL", ""),
            ),
        ),
        (
            "gitlab",
            preset(
                &["gitlab.com", "*.gitlab.com"],
                header("PRIVATE-TOKEN", "{secret}"),
                "GITLAB_TOKEN",
                ("", ""),
            ),
        ),
        (
            "anthropic",
            preset(
                &["api.anthropic.com"],
                header("x-api-key", "{secret}"),
                "ANTHROPIC_API_KEY",
                ("ANTHROPIC_BASE_URL", ""),
            ),
        ),
        (
            "openai",
            preset(
                &["api.openai.com"],
                header("Authorization", "Bearer {secret}"),
                "OPENAI_API_KEY",
                ("OPENAI_BASE_URL", "/v1"),
            ),
        ),
        (
            "npm",
            preset(
                &["registry.npmjs.org"],
                header("Authorization", "Bearer {secret}"),
                "NPM_TOKEN",
                ("NPM_CONFIG_REGISTRY", "/"),
            ),
        ),
        (
            "pypi",
            preset(
                &["upload.pypi.org", "test.pypi.org"],
                InjectConfig {
                    basic: Some(BasicConfig {
                        username: "__token__".to_owned(),
                    }),
                    ..Default::default()
                },
                "TWINE_PASSWORD",
                ("", ""),
            ),
        ),
    ])
}

/// A grant error: the dotted key at fault and what was expected.
pub type GrantError = (String, String);

/// Presets merged with the config's grants, all validated.
pub fn effective(
    configured: &BTreeMap<String, GrantConfig>,
) -> Result<BTreeMap<String, Grant>, GrantError> {
    let presets = presets();
    let mut out = BTreeMap::new();
    for (name, base) in &presets {
        if !configured.contains_key(*name) {
            out.insert(
                (*name).to_owned(),
                build(name, base, None, GrantSource::Preset)?,
            );
        }
    }
    for (name, table) in configured {
        let key = |field: &str| format!("grants.{name}.{field}");
        let base_name = table
            .preset
            .as_deref()
            .or_else(|| presets.contains_key(name.as_str()).then_some(name.as_str()));
        let base = match base_name {
            Some(p) => Some(presets.get(p).ok_or_else(|| {
                (
                    key("preset"),
                    format!(
                        "unknown preset {p:?}; presets are {}",
                        presets.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                )
            })?),
            None => None,
        };
        let merged = merge(base, table);
        out.insert(
            name.clone(),
            build(name, &merged, base_name, GrantSource::Config)?,
        );
    }
    Ok(out)
}

fn merge(base: Option<&GrantConfig>, over: &GrantConfig) -> GrantConfig {
    let base = base.cloned().unwrap_or_default();
    GrantConfig {
        preset: None,
        secret: over.secret.clone().or(base.secret),
        hosts: over.hosts.clone().or(base.hosts),
        inject: over.inject.clone().or(base.inject),
        placeholder_env: over.placeholder_env.clone().or(base.placeholder_env),
        plaintext: over.plaintext.or(base.plaintext),
        substitute_body: over.substitute_body.or(base.substitute_body),
        base_url_env: over.base_url_env.clone().or(base.base_url_env),
        base_url_path: over.base_url_path.clone().or(base.base_url_path),
        require_runner: over.require_runner.clone().or(base.require_runner),
        public_suffix: over.public_suffix.or(base.public_suffix),
    }
}

fn build(
    name: &str,
    table: &GrantConfig,
    preset: Option<&str>,
    source: GrantSource,
) -> Result<Grant, GrantError> {
    let key = |field: &str| format!("grants.{name}.{field}");
    if keyward_vault::validate_name(name).is_err() {
        return Err((
            format!("grants.{name}"),
            "a grant name is 1-64 of a-z 0-9 _ . - starting with a letter or digit".to_owned(),
        ));
    }
    // A preset's secret defaults to vault:<preset name>.
    let secret_text = match (
        &table.secret,
        preset.or((source == GrantSource::Preset).then_some(name)),
    ) {
        (Some(s), _) => s.clone(),
        (None, Some(p)) => format!("vault:{p}"),
        (None, None) => {
            return Err((
                key("secret"),
                "missing: expected a reference such as \"vault:NAME\"".to_owned(),
            ));
        }
    };
    let secret: SecretRef = secret_text
        .parse()
        .map_err(|e: keyward_vault::RefError| (key("secret"), e.to_string()))?;
    let hosts = table.hosts.as_deref().unwrap_or_default();
    if hosts.is_empty() {
        return Err((
            key("hosts"),
            "expected at least one host pattern".to_owned(),
        ));
    }
    let parsed = hosts
        .iter()
        .map(|h| GrantHost::parse(h).map_err(|e| (key("hosts"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    // A preset's own hosts were chosen here (`*.githubusercontent.com` is
    // GitHub's); anything else naming a public suffix needs saying so.
    let vetted = preset
        .or((source == GrantSource::Preset).then_some(name))
        .and_then(|p| presets().remove(p))
        .and_then(|p| p.hosts)
        .unwrap_or_default();
    let mut public_suffix = false;
    for (text, host) in hosts.iter().zip(&parsed) {
        let Some(suffix) = host.public_suffix() else {
            continue;
        };
        public_suffix = true;
        if !vetted.contains(text) && table.public_suffix != Some(true) {
            return Err((
                key("hosts"),
                format!(
                    "{text:?} covers every site under the public suffix {suffix}: the secret \
                     would go to all of them; name the service's own host (e.g. \
                     api.example.{suffix}), or set public_suffix = true in [grants.{name}] \
                     (grant add --public-suffix) if that is really meant"
                ),
            ));
        }
    }
    let hosts = parsed;
    let inject = injection(table.inject.as_ref()).map_err(|e| (key("inject"), e))?;
    let is_var_name = |var: &str| {
        !var.is_empty()
            && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !var.as_bytes()[0].is_ascii_digit()
    };
    for (field, var) in [
        ("placeholder_env", &table.placeholder_env),
        ("base_url_env", &table.base_url_env),
    ] {
        if let Some(var) = var
            && !is_var_name(var)
        {
            return Err((
                key(field),
                format!("{var:?} is not an environment variable name"),
            ));
        }
    }
    let base_url_path = table.base_url_path.clone().unwrap_or_default();
    if !base_url_path.is_empty()
        && (!base_url_path.starts_with('/')
            || base_url_path
                .bytes()
                .any(|b| !(b.is_ascii_graphic()) || b == b'?' || b == b'#'))
    {
        return Err((
            key("base_url_path"),
            format!("{base_url_path:?} is not a URL path (expected e.g. \"/v1\")"),
        ));
    }
    if table.base_url_path.is_some() && table.base_url_env.is_none() {
        return Err((
            key("base_url_path"),
            "needs base_url_env: the variable the base URL goes in".to_owned(),
        ));
    }
    let require_runner = table.require_runner.clone().unwrap_or_default();
    for (claim, pattern) in &require_runner {
        keyward_policy::Glob::new(pattern)
            .map_err(|e| (key(&format!("require_runner.{claim}")), e))?;
    }
    Ok(Grant {
        require_runner,
        name: name.to_owned(),
        source,
        secret,
        hosts,
        inject,
        placeholder_env: table.placeholder_env.clone(),
        plaintext: table.plaintext.unwrap_or(false),
        substitute_body: table.substitute_body.unwrap_or(false),
        base_url: table.base_url_env.clone().map(|var| (var, base_url_path)),
        public_suffix,
    })
}

fn injection(inject: Option<&InjectConfig>) -> Result<Injection, String> {
    let inject = inject.ok_or("missing: expected { header = \"NAME\", format = \"... {secret}\" }, { basic = { username = \"USER\" } } or { query = \"PARAM\" }")?;
    let kinds = [
        inject.header.is_some(),
        inject.basic.is_some(),
        inject.query.is_some(),
    ]
    .iter()
    .filter(|k| **k)
    .count();
    if kinds != 1 {
        return Err("expected exactly one of header, basic or query".to_owned());
    }
    if let Some(header) = &inject.header {
        let token_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if header.is_empty() || !header.bytes().all(token_char) {
            return Err(format!("{header:?} is not a valid header name"));
        }
        let format = inject
            .format
            .clone()
            .unwrap_or_else(|| "{secret}".to_owned());
        if !format.contains("{secret}") {
            return Err(format!("format {format:?} has no {{secret}}"));
        }
        if format.bytes().any(|b| b == b'\r' || b == b'\n') {
            return Err("format must not contain line breaks".to_owned());
        }
        return Ok(Injection::Header {
            name: header.clone(),
            format,
        });
    }
    if inject.format.is_some() {
        return Err("format applies only to header injection".to_owned());
    }
    if let Some(basic) = &inject.basic {
        if basic.username.contains(':') {
            return Err("a basic-auth username cannot contain ':'".to_owned());
        }
        return Ok(Injection::Basic {
            username: basic.username.clone(),
        });
    }
    let param = inject.query.clone().unwrap_or_default();
    if param.is_empty() {
        return Err("query needs a parameter name".to_owned());
    }
    Ok(Injection::Query { param })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> BTreeMap<String, GrantConfig> {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn hosts_naming_a_public_suffix_are_refused_unless_said() {
        for host in [
            "com",
            "*.com",
            "*.co.uk",
            "co.uk:8443",
            "*.github.io",
            "*.herokuapp.com",
        ] {
            let text = format!(
                "[t]\nsecret = \"vault:x\"\nhosts = [\"{host}\"]\ninject = {{ header = \"X\" }}\n"
            );
            let (key, message) = effective(&table(&text)).unwrap_err();
            assert_eq!(key, "grants.t.hosts", "{host}");
            assert!(
                message.contains("public suffix") && message.contains("public_suffix = true"),
                "{host}: {message}"
            );
            let allowed = format!("{text}public_suffix = true\n");
            let grants = effective(&table(&allowed)).unwrap();
            assert!(grants["t"].public_suffix, "{host}");
            // A run that froze it thaws it again after a restart.
            let frozen = grants["t"].frozen();
            assert_eq!(frozen.public_suffix, Some(true));
            assert_eq!(Grant::thaw("t", &frozen).unwrap(), grants["t"]);
        }
        for host in [
            "api.example.co.uk",
            "localhost",
            "*.localhost",
            "internal",
            "*.example.com",
        ] {
            let text = format!(
                "[t]\nsecret = \"vault:x\"\nhosts = [\"{host}\"]\ninject = {{ header = \"X\" }}\n"
            );
            let grants = effective(&table(&text)).unwrap_or_else(|e| panic!("{host}: {e:?}"));
            assert!(!grants["t"].public_suffix, "{host}");
        }
        // The github preset's own *.githubusercontent.com stays as chosen,
        // with or without an override of other fields.
        let grants = effective(&table("[github]\nplaceholder_env = \"GH\"\n")).unwrap();
        assert!(grants["github"].public_suffix);
    }

    #[test]
    fn a_frozen_grant_thaws_to_the_same_grant() {
        let configured = table(
            r#"
            [custom]
            secret = "cmd:/bin/echo 'a b'"
            hosts = ["api.example.com:8443", "*.example.org"]
            inject = { basic = { username = "me" } }
            plaintext = true
            base_url_env = "CUSTOM_URL"
            base_url_path = "/v1"
            require_runner = { repository = "acme/*" }
            [q]
            secret = "env:Q"
            hosts = ["q.example.com"]
            inject = { query = "key" }
            "#,
        );
        for grant in effective(&configured).unwrap().values() {
            let thawed = Grant::thaw(&grant.name, &grant.frozen()).unwrap();
            assert_eq!(thawed.frozen(), grant.frozen(), "{}", grant.name);
            assert_eq!(
                (
                    &thawed.secret,
                    &thawed.hosts,
                    &thawed.inject,
                    thawed.plaintext
                ),
                (&grant.secret, &grant.hosts, &grant.inject, grant.plaintext),
                "{}",
                grant.name
            );
            assert_eq!(thawed.base_url, grant.base_url);
            assert_eq!(thawed.require_runner, grant.require_runner);
        }
    }

    #[test]
    fn presets_are_available_without_config() {
        let grants = effective(&BTreeMap::new()).unwrap();
        for name in ["github", "gitlab", "anthropic", "openai", "npm", "pypi"] {
            let g = &grants[name];
            assert_eq!(g.source, GrantSource::Preset);
            assert_eq!(g.secret.to_string(), format!("vault:{name}"));
        }
        assert_eq!(
            grants["anthropic"].inject,
            Injection::Header {
                name: "x-api-key".into(),
                format: "{secret}".into()
            }
        );
    }

    #[test]
    fn config_overrides_a_preset_field_by_field_and_defines_new_grants() {
        let grants = effective(&table(
            r#"
            [github]
            secret = "env:GH_PAT"
            [internal]
            preset = "github"
            hosts = ["git.example.com"]
            [api]
            secret = "file:/run/k"
            hosts = ["api.example.com", "legacy.example.com:8080"]
            inject = { query = "app_key" }
            plaintext = true
            substitute_body = true
            "#,
        ))
        .unwrap();
        assert_eq!(grants["github"].secret.to_string(), "env:GH_PAT");
        assert_eq!(grants["github"].hosts.len(), 3);
        assert_eq!(grants["internal"].secret.to_string(), "vault:github");
        assert_eq!(grants["internal"].hosts[0].to_string(), "git.example.com");
        assert_eq!(
            grants["api"].inject,
            Injection::Query {
                param: "app_key".into()
            }
        );
        assert_eq!(
            grants["api"].hosts[1].to_string(),
            "legacy.example.com:8080"
        );
        assert!(grants["api"].plaintext && grants["api"].substitute_body);
        // Off unless asked for, presets included.
        assert!(!grants["github"].plaintext && !grants["github"].substitute_body);
        assert!(!grants["internal"].plaintext);
        assert!(grants["github"].hosts[0].matches("api.github.com", 443, true));
        assert!(!grants["github"].hosts[0].matches("api.github.com", 8443, true));
    }

    #[test]
    fn invalid_grants_name_grant_and_field() {
        for (text, key, needle) in [
            (
                "[x]\nsecret = \"s3:b\"\nhosts=[\"a.com\"]\ninject={query=\"k\"}",
                "grants.x.secret",
                "unknown secret scheme",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[]\ninject={query=\"k\"}",
                "grants.x.hosts",
                "at least one",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[\"https://a.com\"]\ninject={query=\"k\"}",
                "grants.x.hosts",
                "is a URL; expected a host or host:port, as in \"a.com:443\"",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[\"a.com/path\"]\ninject={query=\"k\"}",
                "grants.x.hosts",
                "not a host pattern",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[\"a.com\"]\ninject={header=\"A\", format=\"Bearer\"}",
                "grants.x.inject",
                "no {secret}",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[\"a.com\"]\ninject={header=\"A\", query=\"k\"}",
                "grants.x.inject",
                "exactly one",
            ),
            (
                "[x]\nhosts=[\"a.com\"]\ninject={query=\"k\"}",
                "grants.x.secret",
                "missing",
            ),
            (
                "[x]\nsecret = \"vault:a\"\nhosts=[\"a.com:99999\"]\ninject={query=\"k\"}",
                "grants.x.hosts",
                "not a port",
            ),
            (
                "[x]\npreset = \"nope\"",
                "grants.x.preset",
                "unknown preset",
            ),
        ] {
            let (k, msg) = effective(&table(text)).unwrap_err();
            assert_eq!(k, key, "{text}");
            assert!(msg.contains(needle), "{text}: {msg}");
        }
    }
}
