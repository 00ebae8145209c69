//! Admin API request bodies, decoded as the daemon decodes them (an
//! all-whitespace body is the default; anything else must be JSON of the
//! route's type), then checked as the routes check them. The `Debug` form
//! of a request carrying a secret value or passphrase never depends on it.
#![no_main]

use keyward_api::{
    CreateRunRequest, InitVaultRequest, PatchRunRequest, RollbackRequest, SetSecretRequest,
    ShutdownRequest, UnsealRequest,
};
use keyward_proxy::AllowRule;
use keyward_vault::validate_name;
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;

fn body<T: DeserializeOwned + Default>(bytes: &[u8]) -> Option<T> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Some(T::default());
    }
    serde_json::from_slice(bytes).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&route, bytes)) = data.split_first() else {
        return;
    };
    match route % 7 {
        0 => {
            if let Some(req) = body::<CreateRunRequest>(bytes) {
                for allow in &req.allow {
                    let _ = AllowRule::parse(allow);
                }
                for grant in &req.grants {
                    let _ = validate_name(grant);
                }
            }
        }
        1 => {
            let _ = body::<PatchRunRequest>(bytes);
        }
        2 => {
            let _ = body::<ShutdownRequest>(bytes);
        }
        3 => {
            if let Some(mut req) = body::<SetSecretRequest>(bytes) {
                let shown = format!("{req:?}");
                req.value = String::new();
                assert_eq!(shown, format!("{req:?}"), "Debug shows the value");
            }
        }
        4 => {
            if let Some(mut req) = body::<InitVaultRequest>(bytes) {
                let shown = format!("{req:?}");
                req.passphrase = req.passphrase.map(|_| String::new());
                assert_eq!(shown, format!("{req:?}"), "Debug shows the passphrase");
            }
        }
        5 => {
            if let Some(mut req) = body::<UnsealRequest>(bytes) {
                let shown = format!("{req:?}");
                req.passphrase = req.passphrase.map(|_| String::new());
                assert_eq!(shown, format!("{req:?}"), "Debug shows the passphrase");
            }
        }
        _ => {
            let _ = body::<RollbackRequest>(bytes);
        }
    }
});
