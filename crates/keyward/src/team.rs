//! `keyward token ...` and `keyward role ...`: the team's API tokens and
//! their roles, through the daemon (which alone writes `<home>/auth/`).

use std::process::ExitCode;

use anyhow::Result;
use hyper::Method;
use keyward_api::{
    IssueTokenRequest, IssuedToken, IssuedTokens, RoleInfo, RoleList, RoleRequest, TokenInfo,
    TokenList,
};

use crate::cli::{RoleCommand, RoleSpecArgs, TokenCommand};
use crate::context::Context;
use keyward_api::printable;

pub async fn token(ctx: &Context, cmd: &TokenCommand) -> Result<ExitCode> {
    let client = ctx.ensure_daemon().await?;
    match cmd {
        TokenCommand::Issue {
            user,
            role,
            expires,
            description,
            json,
        } => {
            let req = IssueTokenRequest {
                user: user.clone(),
                role: role.clone(),
                expires_days: *expires,
                description: description.clone(),
            };
            let issued: IssuedToken = client.call(Method::POST, "/v1/tokens", Some(&req)).await?;
            print_issued(&issued, json.json)?;
        }
        TokenCommand::List(json) => {
            let list: TokenList = client.call(Method::GET, "/v1/tokens", None::<&()>).await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.tokens.is_empty() {
                println!("no tokens (`keyward token issue --user U --role R` makes one)");
            } else {
                println!(
                    "{:<20} {:<12} {:<21} {:<21} LAST USED",
                    "USER", "ROLE", "CREATED", "EXPIRES"
                );
                for t in &list.tokens {
                    println!(
                        "{:<20} {:<12} {:<21} {:<21} {}",
                        printable(&t.user),
                        printable(&t.role),
                        t.created,
                        t.expires.as_deref().unwrap_or("never"),
                        t.last_used.as_deref().unwrap_or("never"),
                    );
                }
            }
        }
        TokenCommand::Revoke { user, json } => {
            let info: TokenInfo = client
                .call(Method::DELETE, &format!("/v1/tokens/{user}"), None::<&()>)
                .await?;
            if json.json {
                println!("{}", serde_json::to_string(&info)?);
            } else {
                println!("revoked the token of {} (role {})", info.user, info.role);
            }
        }
        TokenCommand::Rotate { user, json } => {
            let issued: IssuedToken = client
                .call(
                    Method::POST,
                    &format!("/v1/tokens/{user}/rotate"),
                    None::<&()>,
                )
                .await?;
            print_issued(&issued, json.json)?;
        }
        TokenCommand::RotateAll(json) => {
            let all: IssuedTokens = client
                .call(Method::POST, "/v1/tokens/rotate-all", None::<&()>)
                .await?;
            if json.json {
                println!("{}", serde_json::to_string(&all)?);
            } else {
                for t in &all.tokens {
                    println!("{} {}", t.info.user, t.token);
                }
                eprintln!(
                    "keyward: rotated {} token(s); the old ones no longer work, and the new ones \
                     are shown only this once",
                    all.tokens.len()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The token alone on stdout (so `> file` keeps just it); what it is on
/// stderr.
fn print_issued(issued: &IssuedToken, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(issued)?);
        return Ok(());
    }
    println!("{}", issued.token);
    eprintln!(
        "keyward: token for {} (role {}, expires {}); shown only this once, kept only as a hash: \
         store it now",
        issued.info.user,
        issued.info.role,
        issued.info.expires.as_deref().unwrap_or("never")
    );
    Ok(())
}

fn role_request(name: Option<&str>, spec: &RoleSpecArgs, create: bool) -> RoleRequest {
    RoleRequest {
        name: name.map(str::to_owned),
        // On update, no --scope leaves the scopes as they are.
        scopes: (create || !spec.scopes.is_empty()).then(|| spec.scopes.clone()),
        rate_limit: spec.rate_limit.as_ref().map(|l| {
            if l == "none" {
                String::new()
            } else {
                l.clone()
            }
        }),
        description: spec.description.clone(),
    }
}

fn print_role(role: &RoleInfo) {
    println!(
        "{}{}: {}{}",
        printable(&role.name),
        if role.builtin { " (built in)" } else { "" },
        role.scopes.join(", "),
        role.rate_limit
            .as_deref()
            .map(|l| format!("; at most {l} per user"))
            .unwrap_or_default()
    );
    if !role.description.is_empty() {
        println!("  {}", printable(&role.description));
    }
    if !role.users.is_empty() {
        println!("  held by: {}", printable(&role.users.join(", ")));
    }
}

pub async fn role(ctx: &Context, cmd: &RoleCommand) -> Result<ExitCode> {
    let client = ctx.ensure_daemon().await?;
    let (answer, json): (RoleInfo, bool) = match cmd {
        RoleCommand::List(json) => {
            let list: RoleList = client.call(Method::GET, "/v1/roles", None::<&()>).await?;
            if json.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                list.roles.iter().for_each(print_role);
            }
            return Ok(ExitCode::SUCCESS);
        }
        RoleCommand::Create { name, spec } => (
            client
                .call(
                    Method::POST,
                    "/v1/roles",
                    Some(&role_request(Some(name), spec, true)),
                )
                .await?,
            spec.json.json,
        ),
        RoleCommand::Update { name, spec } => (
            client
                .call(
                    Method::PATCH,
                    &format!("/v1/roles/{name}"),
                    Some(&role_request(None, spec, false)),
                )
                .await?,
            spec.json.json,
        ),
        RoleCommand::Delete { name, json } => {
            let _: serde_json::Value = client
                .call(Method::DELETE, &format!("/v1/roles/{name}"), None::<&()>)
                .await?;
            if json.json {
                println!("{}", serde_json::json!({"deleted": name}));
            } else {
                println!("deleted role {name}");
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&answer)?);
    } else {
        print_role(&answer);
    }
    Ok(ExitCode::SUCCESS)
}
