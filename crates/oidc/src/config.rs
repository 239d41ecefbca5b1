//! Provider configuration and its validation.

use std::collections::HashSet;
use std::fmt;

use openidconnect::url::{Host, Url};
use openidconnect::{ClientId, ClientSecret, IssuerUrl, RedirectUrl, Scope};

use crate::OidcError;

/// The scopes requested when a provider's `scopes` is empty.
pub const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// One OpenID Provider (Google, Okta, Azure AD, Keycloak ... are all just issuers).
///
/// `Debug` redacts `client_secret`.
#[derive(Clone, serde::Deserialize)]
pub struct ProviderConfig {
    /// The name in Zen's URLs and API (`/auth/callback/<name>`): 1 to 64 of `A-Z a-z 0-9 - _`,
    /// unique (ignoring case).
    pub name: String,
    /// The issuer identifier, exactly as the provider's discovery document spells it
    /// (`<issuer_url>/.well-known/openid-configuration` must name this issuer). `https://`
    /// in production; `http://` is accepted (tests, a local Keycloak) and logged as a warning
    /// unless the host is a loopback address.
    pub issuer_url: String,
    /// The client (application) registered at the provider.
    pub client_id: String,
    /// Its secret: Zen is a confidential client.
    pub client_secret: String,
    /// Scopes to request; `openid email profile` when empty. `openid` is always requested.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back, registered at the provider, e.g.
    /// `https://zen.example/auth/callback/<name>`.
    pub redirect_url: String,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("name", &self.name)
            .field("issuer_url", &self.issuer_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .field("redirect_url", &self.redirect_url)
            .finish()
    }
}

/// A provider configuration that passed validation, in the library's types.
pub(crate) struct ValidProvider {
    pub name: String,
    pub issuer: IssuerUrl,
    pub client_id: ClientId,
    pub client_secret: ClientSecret,
    /// Without `openid` (the library always adds it first).
    pub scopes: Vec<Scope>,
    pub redirect_url: RedirectUrl,
}

pub(crate) fn validate_all(
    providers: Vec<ProviderConfig>,
) -> Result<Vec<ValidProvider>, OidcError> {
    let mut seen = HashSet::new();
    let mut valid = Vec::with_capacity(providers.len());
    for provider in providers {
        if !seen.insert(provider.name.to_ascii_lowercase()) {
            return Err(OidcError::Config(format!(
                "provider name `{}` is used twice",
                provider.name
            )));
        }
        valid.push(validate(provider)?);
    }
    Ok(valid)
}

fn validate(p: ProviderConfig) -> Result<ValidProvider, OidcError> {
    let name = p.name;
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(OidcError::Config(format!(
            "provider name `{}` must be 1 to 64 of A-Z a-z 0-9 - _",
            name.escape_debug()
        )));
    }
    let err = |what: &str| OidcError::Config(format!("provider `{name}`: {what}"));

    let issuer = parse_url(&p.issuer_url).map_err(|e| err(&format!("issuer_url {e}")))?;
    if issuer.query().is_some() {
        return Err(err("issuer_url must not have a query"));
    }
    if issuer.scheme() == "http" && !is_loopback(&issuer) {
        tracing::warn!(
            provider = %name,
            "OIDC issuer uses plain http on a non-loopback host; use https in production"
        );
    }
    // Keep the configured spelling: the discovery document must name exactly this issuer.
    let issuer =
        IssuerUrl::new(p.issuer_url.clone()).map_err(|e| err(&format!("issuer_url: {e}")))?;

    let redirect = parse_url(&p.redirect_url).map_err(|e| err(&format!("redirect_url {e}")))?;
    let redirect_url = RedirectUrl::from_url(redirect);

    if p.client_id.is_empty() || p.client_id.chars().any(char::is_control) {
        return Err(err("client_id must be non-empty printable text"));
    }
    if p.client_secret.is_empty() {
        return Err(err(
            "client_secret must be set (Zen is a confidential client)",
        ));
    }

    let requested: Vec<String> = if p.scopes.is_empty() {
        DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect()
    } else {
        p.scopes
    };
    let mut scopes = Vec::new();
    let mut seen = HashSet::new();
    for scope in requested {
        // RFC 6749 §3.3: scope-token = 1*( %x21 / %x23-5B / %x5D-7E )
        if scope.is_empty()
            || !scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return Err(err(&format!("invalid scope `{}`", scope.escape_debug())));
        }
        if scope != "openid" && seen.insert(scope.clone()) {
            scopes.push(Scope::new(scope));
        }
    }

    Ok(ValidProvider {
        name: name.clone(),
        issuer,
        client_id: openidconnect::ClientId::new(p.client_id),
        client_secret: ClientSecret::new(p.client_secret),
        scopes,
        redirect_url,
    })
}

/// An absolute http(s) URL with a host, no credentials and no fragment.
fn parse_url(raw: &str) -> Result<Url, String> {
    let url = Url::parse(raw).map_err(|e| format!("`{raw}` is not a URL: {e}"))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(format!("`{raw}` must be https:// (or http:// for tests)"));
    }
    if url.host().is_none() {
        return Err(format!("`{raw}` has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials".into());
    }
    if url.fragment().is_some() {
        return Err(format!("`{raw}` must not have a fragment"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> ProviderConfig {
        ProviderConfig {
            name: name.into(),
            issuer_url: "https://accounts.google.com".into(),
            client_id: "client".into(),
            client_secret: "secret".into(),
            scopes: vec![],
            redirect_url: format!("https://zen.example/auth/callback/{name}"),
        }
    }

    fn config_error(providers: Vec<ProviderConfig>) -> String {
        match validate_all(providers) {
            Err(OidcError::Config(m)) => m,
            Err(other) => panic!("expected Config, got {other:?}"),
            Ok(_) => panic!("expected Config, got Ok"),
        }
    }

    #[test]
    fn accepts_a_valid_configuration_with_default_scopes() {
        let valid = validate_all(vec![cfg("google"), cfg("okta-1")]).unwrap();
        assert_eq!(valid.len(), 2);
        let scopes: Vec<&str> = valid[0].scopes.iter().map(|s| s.as_str()).collect();
        assert_eq!(
            scopes,
            ["email", "profile"],
            "openid is added by the library"
        );
        assert_eq!(valid[0].issuer.as_str(), "https://accounts.google.com");
    }

    #[test]
    fn custom_scopes_are_deduplicated_and_openid_is_implicit() {
        let mut c = cfg("kc");
        c.scopes = vec![
            "email".into(),
            "openid".into(),
            "email".into(),
            "groups".into(),
        ];
        let valid = validate_all(vec![c]).unwrap();
        let scopes: Vec<&str> = valid[0].scopes.iter().map(|s| s.as_str()).collect();
        assert_eq!(scopes, ["email", "groups"]);
    }

    #[test]
    fn rejects_duplicate_names_ignoring_case() {
        assert!(config_error(vec![cfg("google"), cfg("Google")]).contains("used twice"));
    }

    #[test]
    fn rejects_bad_names() {
        for name in ["", "a b", "a/b", "ü", &"x".repeat(65)] {
            config_error(vec![cfg(name)]);
        }
    }

    #[test]
    fn rejects_bad_urls_and_credentials() {
        let cases: Vec<fn(&mut ProviderConfig)> = vec![
            |c| c.issuer_url = "accounts.google.com".into(),
            |c| c.issuer_url = "ftp://accounts.google.com".into(),
            |c| c.issuer_url = "https://accounts.google.com/?x=1".into(),
            |c| c.issuer_url = "https://accounts.google.com/#frag".into(),
            |c| c.issuer_url = "https://user:pw@accounts.google.com".into(),
            |c| c.redirect_url = "/auth/callback/google".into(),
            |c| c.redirect_url = "javascript:alert(1)".into(),
            |c| c.redirect_url = "https://zen.example/cb#x".into(),
            |c| c.client_id = String::new(),
            |c| c.client_secret = String::new(),
            |c| c.scopes = vec!["two words".into()],
            |c| c.scopes = vec![String::new()],
        ];
        for (i, mutate) in cases.into_iter().enumerate() {
            let mut c = cfg("p");
            mutate(&mut c);
            let message = config_error(vec![c]);
            assert!(message.starts_with("provider `p`"), "case {i}: {message}");
        }
    }

    #[test]
    fn accepts_http_issuers_for_tests() {
        let mut c = cfg("local");
        c.issuer_url = "http://127.0.0.1:8080".into();
        c.redirect_url = "http://127.0.0.1:3000/auth/callback/local".into();
        validate_all(vec![c]).unwrap();
    }

    #[test]
    fn debug_redacts_the_client_secret() {
        let mut c = cfg("google");
        c.client_secret = "s3cr3t-value".into();
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
