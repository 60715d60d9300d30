//! `crabbox whoami`: who the Crabbox coordinator takes this process for
//! (`GET /v1/whoami`), printed as Crabbox's `whoami` prints it
//! (internal/cli/auth.go:460-486): `user=… org=… auth=… broker=…`, or the
//! coordinator's JSON with `--json`.

use std::process::ExitCode;

use clap::Args;

use super::exit::{self, USAGE};
use crabbox_providers::coordinator::Settings;
use crabbox_providers::coordinator::api::URL_ENV;

#[derive(Debug, Args)]
pub(super) struct WhoamiArgs {
    /// Print the coordinator's answer as JSON.
    #[arg(long)]
    pub(super) json: bool,
}

/// The coordinator URL without credentials or query, as Crabbox's
/// `redactedConfigURL` shows it.
fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    format!("{scheme}://{rest}")
}

pub(super) fn whoami(args: &WhoamiArgs) -> ExitCode {
    let Some(settings) = Settings::from_env() else {
        super::report::error(
            "usage",
            "whoami requires a configured coordinator",
            Some(&format!(
                "set {URL_ENV} (and CRABBOX_COORDINATOR_TOKEN) to the coordinator's URL"
            )),
        );
        return exit::code(USAGE);
    };
    let client = match settings.client() {
        Ok(c) => c,
        Err(e) => return exit::provider_error("", &e),
    };
    let who = match super::engine::runtime().block_on(client.whoami()) {
        Ok(who) => who,
        Err(e) => return exit::provider_error("whoami: ", &e.error),
    };
    if args.json {
        match serde_json::to_string(&who) {
            Ok(text) => {
                super::report::printed_document();
                println!("{text}");
            }
            Err(e) => {
                anstream::eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!(
            "user={} org={} auth={} broker={}",
            who.owner,
            who.org,
            who.auth,
            redacted(&settings.url)
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn the_url_is_shown_without_credentials_or_query() {
        assert_eq!(
            redacted("https://me:secret@coord.example/x?token=t"),
            "https://coord.example/x"
        );
        assert_eq!(redacted("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
    }
}
