//! Every verification scheme: accepts a correct signature, refuses a tampered body, a wrong
//! secret, a stale timestamp and a malformed header; rotation and several signatures per header.
//!
//! Signatures here are computed independently with the `hmac`/`ed25519-dalek` primitives from
//! the formats' published definitions (the provider libraries themselves sign in the
//! conformance suite, tests/conformance/test_webhooks.py).

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Sha256, Sha512};
use zen_webhook::{
    slack_url_verification, verify, Delivery, Failure, GenericHmac, HmacAlgorithm, Scheme,
    SignatureEncoding, Verified,
};

const NOW: i64 = 1_790_000_000;
const TOL: Duration = Duration::from_secs(300);
const SECRET: &str = "s3cret-for-tests-0123";
const OTHER: &str = "another-secret-4567890";
const BODY: &[u8] = br#"{"id":"evt_1","kind":"test"}"#;
const TAMPERED: &[u8] = br#"{"id":"evt_1","kind":"tEst"}"#;

fn mac256(key: &[u8], content: &[u8]) -> Vec<u8> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    m.update(content);
    m.finalize().into_bytes().to_vec()
}

fn headers(pairs: &[(&str, String)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect()
}

fn check(
    scheme: &Scheme,
    h: &HashMap<String, String>,
    body: &[u8],
    secrets: &[&str],
) -> Result<Verified, Failure> {
    verify(scheme, &Delivery { headers: h, body }, secrets, NOW, TOL)
}

fn label(r: Result<Verified, Failure>) -> &'static str {
    r.map(|_| "ok").unwrap_or_else(|f| f.label())
}

// ---- zen-hmac ---------------------------------------------------------------------------

fn zen_headers(secret: &str, ts: i64, nonce: &str, body: &[u8]) -> HashMap<String, String> {
    let content = [format!("{ts}.{nonce}.").as_bytes(), body].concat();
    headers(&[
        ("X-Timestamp", ts.to_string()),
        ("X-Nonce", nonce.into()),
        (
            "X-Signature",
            hex::encode(mac256(secret.as_bytes(), &content)),
        ),
    ])
}

#[test]
fn zen_hmac() {
    let s = Scheme::ZenHmac;
    let h = zen_headers(SECRET, NOW, "n-1", BODY);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!(ok.delivery_id.as_deref(), Some("n-1"));
    assert_eq!(ok.timestamp, Some(NOW));
    assert_eq!(ok.secret_index, 0);

    // The documented example of the canonical string.
    let ex = mac256(b"0123456789abcdef", b"1700000000.n-1.{}");
    let h_ex = headers(&[
        ("X-Timestamp", "1700000000".into()),
        ("X-Nonce", "n-1".into()),
        ("X-Signature", hex::encode(ex)),
    ]);
    assert!(verify(
        &s,
        &Delivery {
            headers: &h_ex,
            body: b"{}"
        },
        &["0123456789abcdef"],
        1_700_000_000,
        TOL
    )
    .is_ok());

    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        label(check(&s, &h, BODY, &[OTHER, SECRET])),
        "ok",
        "rotation: the second secret verifies"
    );
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let stale = zen_headers(SECRET, NOW - 301, "n-1", BODY);
    assert_eq!(label(check(&s, &stale, BODY, &[SECRET])), "stale_timestamp");
    let future = zen_headers(SECRET, NOW + 301, "n-1", BODY);
    assert_eq!(
        label(check(&s, &future, BODY, &[SECRET])),
        "stale_timestamp"
    );
    let edge = zen_headers(SECRET, NOW - 300, "n-1", BODY);
    assert_eq!(label(check(&s, &edge, BODY, &[SECRET])), "ok");

    // The nonce is signed: moving bytes between nonce and body breaks the signature, and a
    // nonce with `.` (which would make that ambiguous) is refused outright.
    let mut moved = h.clone();
    moved.insert("x-nonce".into(), "n-2".into());
    assert_eq!(label(check(&s, &moved, BODY, &[SECRET])), "bad_signature");
    let dotted = zen_headers(SECRET, NOW, "n.1", BODY);
    assert_eq!(label(check(&s, &dotted, BODY, &[SECRET])), "malformed");
    let long = zen_headers(SECRET, NOW, &"a".repeat(129), BODY);
    assert_eq!(label(check(&s, &long, BODY, &[SECRET])), "malformed");

    let mut m = h.clone();
    m.remove("x-nonce");
    assert_eq!(
        check(&s, &m, BODY, &[SECRET]),
        Err(Failure::MissingHeader("x-nonce"))
    );
    let mut m = h.clone();
    m.insert("x-timestamp".into(), "17e8".into());
    assert_eq!(label(check(&s, &m, BODY, &[SECRET])), "malformed");
    let mut m = h.clone();
    m.insert("x-signature".into(), "not-hex".into());
    assert_eq!(label(check(&s, &m, BODY, &[SECRET])), "malformed");

    // Several signatures in one header: any one matching any secret is enough.
    let good = h["x-signature"].clone();
    let mut m = h.clone();
    m.insert("x-signature".into(), format!("{} {good}", "00".repeat(32)));
    assert_eq!(label(check(&s, &m, BODY, &[SECRET])), "ok");
}

// ---- Standard Webhooks ------------------------------------------------------------------

const WHSEC: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn sw_sig(secret: &str, id: &str, ts: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let content = [format!("{id}.{ts}.").as_bytes(), body].concat();
    format!("v1,{}", STANDARD.encode(mac256(&key, &content)))
}

fn sw_headers(sig: String, id: &str, ts: i64) -> HashMap<String, String> {
    headers(&[
        ("webhook-id", id.into()),
        ("webhook-timestamp", ts.to_string()),
        ("webhook-signature", sig),
    ])
}

#[test]
fn standard_webhooks_hmac() {
    let s = Scheme::StandardWebhooks;
    // The example of the Standard Webhooks specification and reference libraries.
    let spec_body = br#"{"test": 2432232314}"#;
    let spec = sw_headers(
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=".into(),
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        1614265330,
    );
    let r = verify(
        &s,
        &Delivery {
            headers: &spec,
            body: spec_body,
        },
        &[WHSEC],
        1614265330,
        TOL,
    )
    .unwrap();
    assert_eq!(
        r.delivery_id.as_deref(),
        Some("msg_p5jXN8AQM9LWM0D4loKWxJek")
    );

    let h = sw_headers(sw_sig(WHSEC, "msg_1", NOW, BODY), "msg_1", NOW);
    assert_eq!(label(check(&s, &h, BODY, &[WHSEC])), "ok");
    assert_eq!(label(check(&s, &h, TAMPERED, &[WHSEC])), "bad_signature");
    let other = "whsec_dGhpcyBpcyBhbm90aGVyIGtleSEh";
    assert_eq!(label(check(&s, &h, BODY, &[other])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[other, WHSEC]).unwrap().secret_index,
        1
    );
    let stale = sw_headers(sw_sig(WHSEC, "msg_1", NOW - 600, BODY), "msg_1", NOW - 600);
    assert_eq!(label(check(&s, &stale, BODY, &[WHSEC])), "stale_timestamp");
    // The id is signed.
    let mut m = h.clone();
    m.insert("webhook-id".into(), "msg_2".into());
    assert_eq!(label(check(&s, &m, BODY, &[WHSEC])), "bad_signature");

    // Several entries, in any order, with unknown versions skipped.
    let multi = format!(
        "v2,abc v1,{} {}",
        STANDARD.encode([0u8; 32]),
        sw_sig(WHSEC, "msg_1", NOW, BODY)
    );
    assert_eq!(
        label(check(&s, &sw_headers(multi, "msg_1", NOW), BODY, &[WHSEC])),
        "ok"
    );
    // Rotation and several signatures together: each signed with one of two secrets.
    let both = format!(
        "{} {}",
        sw_sig(other, "msg_1", NOW, BODY),
        sw_sig(WHSEC, "msg_1", NOW, BODY)
    );
    assert_eq!(
        label(check(&s, &sw_headers(both, "msg_1", NOW), BODY, &[WHSEC])),
        "ok"
    );

    assert_eq!(
        label(check(
            &s,
            &sw_headers("v1".into(), "msg_1", NOW),
            BODY,
            &[WHSEC]
        )),
        "malformed"
    );
    assert_eq!(
        label(check(
            &s,
            &sw_headers("v1,***".into(), "msg_1", NOW),
            BODY,
            &[WHSEC]
        )),
        "malformed"
    );
    assert_eq!(
        label(check(
            &s,
            &sw_headers("v9,abc".into(), "msg_1", NOW),
            BODY,
            &[WHSEC]
        )),
        "malformed"
    );
    let mut m = h.clone();
    m.remove("webhook-timestamp");
    assert_eq!(label(check(&s, &m, BODY, &[WHSEC])), "missing_header");
    let no_secrets: [&str; 0] = [];
    assert_eq!(label(check(&s, &h, BODY, &no_secrets)), "unknown_key");
}

#[test]
fn standard_webhooks_ed25519() {
    let s = Scheme::StandardWebhooks;
    let signing = SigningKey::from_bytes(&[7u8; 32]);
    let whpk = format!(
        "whpk_{}",
        STANDARD.encode(signing.verifying_key().to_bytes())
    );
    let sign = |key: &SigningKey, body: &[u8], ts: i64| {
        let content = [format!("msg_9.{ts}.").as_bytes(), body].concat();
        format!("v1a,{}", STANDARD.encode(key.sign(&content).to_bytes()))
    };
    let h = sw_headers(sign(&signing, BODY, NOW), "msg_9", NOW);
    let ok = check(&s, &h, BODY, &[WHSEC, &whpk]).unwrap();
    assert_eq!(ok.secret_index, 1);
    assert_eq!(label(check(&s, &h, TAMPERED, &[&whpk])), "bad_signature");
    let intruder = SigningKey::from_bytes(&[8u8; 32]);
    let forged = sw_headers(sign(&intruder, BODY, NOW), "msg_9", NOW);
    assert_eq!(label(check(&s, &forged, BODY, &[&whpk])), "bad_signature");
    let stale = sw_headers(sign(&signing, BODY, NOW - 301), "msg_9", NOW - 301);
    assert_eq!(label(check(&s, &stale, BODY, &[&whpk])), "stale_timestamp");
    // A v1a signature with only HMAC secrets configured: nothing can check it.
    assert_eq!(label(check(&s, &h, BODY, &[WHSEC])), "unknown_key");
}

// ---- GitHub -----------------------------------------------------------------------------

#[test]
fn github() {
    let s = Scheme::Github;
    // GitHub's documented example: secret "It's a Secret to Everybody", body "Hello, World!".
    let doc = headers(&[(
        "X-Hub-Signature-256",
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".into(),
    )]);
    assert_eq!(
        label(check(
            &s,
            &doc,
            b"Hello, World!",
            &["It's a Secret to Everybody"]
        )),
        "ok"
    );

    let sig = |secret: &str, body: &[u8]| {
        format!("sha256={}", hex::encode(mac256(secret.as_bytes(), body)))
    };
    let h = headers(&[
        ("X-Hub-Signature-256", sig(SECRET, BODY)),
        ("X-GitHub-Delivery", "d-1".into()),
    ]);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!(
        (ok.delivery_id.as_deref(), ok.timestamp),
        (Some("d-1"), None)
    );
    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let bare = headers(&[(
        "X-Hub-Signature-256",
        hex::encode(mac256(SECRET.as_bytes(), BODY)),
    )]);
    assert_eq!(label(check(&s, &bare, BODY, &[SECRET])), "malformed");
    // The SHA-1 header alone is not accepted.
    let sha1 = headers(&[("X-Hub-Signature", "sha1=0000".into())]);
    assert_eq!(label(check(&s, &sha1, BODY, &[SECRET])), "missing_header");
}

// ---- Stripe -----------------------------------------------------------------------------

fn stripe_sig(secret: &str, ts: i64, body: &[u8]) -> String {
    hex::encode(mac256(
        secret.as_bytes(),
        &[format!("{ts}.").as_bytes(), body].concat(),
    ))
}

#[test]
fn stripe() {
    let s = Scheme::Stripe;
    let secret = "whsec_stripe_test_secret_0123";
    let h = headers(&[(
        "Stripe-Signature",
        format!("t={NOW},v1={},v0=ignored", stripe_sig(secret, NOW, BODY)),
    )]);
    let ok = check(&s, &h, BODY, &[secret]).unwrap();
    assert_eq!(ok.delivery_id.as_deref(), Some("evt_1"), "the payload's id");
    assert_eq!(ok.timestamp, Some(NOW));
    assert_eq!(label(check(&s, &h, TAMPERED, &[secret])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, secret]).unwrap().secret_index,
        1
    );
    // Several v1 values (Stripe sends one per active secret during a roll).
    let two = headers(&[(
        "Stripe-Signature",
        format!(
            "t={NOW},v1={},v1={}",
            stripe_sig(OTHER, NOW, BODY),
            stripe_sig(secret, NOW, BODY)
        ),
    )]);
    assert_eq!(label(check(&s, &two, BODY, &[secret])), "ok");
    let stale = headers(&[(
        "Stripe-Signature",
        format!("t={},v1={}", NOW - 400, stripe_sig(secret, NOW - 400, BODY)),
    )]);
    assert_eq!(label(check(&s, &stale, BODY, &[secret])), "stale_timestamp");
    // Only v0 (the test-mode legacy scheme) is not enough.
    let v0 = headers(&[(
        "Stripe-Signature",
        format!("t={NOW},v0={}", stripe_sig(secret, NOW, BODY)),
    )]);
    assert_eq!(label(check(&s, &v0, BODY, &[secret])), "malformed");
    let no_t = headers(&[(
        "Stripe-Signature",
        format!("v1={}", stripe_sig(secret, NOW, BODY)),
    )]);
    assert_eq!(label(check(&s, &no_t, BODY, &[secret])), "malformed");
    // The timestamp is signed.
    let moved = headers(&[(
        "Stripe-Signature",
        format!("t={},v1={}", NOW + 1, stripe_sig(secret, NOW, BODY)),
    )]);
    assert_eq!(label(check(&s, &moved, BODY, &[secret])), "bad_signature");
}

// ---- Slack ------------------------------------------------------------------------------

#[test]
fn slack() {
    let s = Scheme::Slack;
    // Slack's documented example (signing secret, timestamp, body and signature).
    let doc_body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let doc = headers(&[
        ("X-Slack-Request-Timestamp", "1531420618".into()),
        (
            "X-Slack-Signature",
            "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503".into(),
        ),
    ]);
    let r = verify(
        &s,
        &Delivery {
            headers: &doc,
            body: doc_body,
        },
        &["8f742231b10e8888abcd99yyyzzz85a5"],
        1531420618,
        TOL,
    );
    assert_eq!(label(r), "ok");

    let sig = |secret: &str, ts: i64, body: &[u8]| {
        format!(
            "v0={}",
            hex::encode(mac256(
                secret.as_bytes(),
                &[format!("v0:{ts}:").as_bytes(), body].concat()
            ))
        )
    };
    let h = headers(&[
        ("X-Slack-Request-Timestamp", NOW.to_string()),
        ("X-Slack-Signature", sig(SECRET, NOW, BODY)),
    ]);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!((ok.delivery_id, ok.timestamp), (None, Some(NOW)));
    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let stale = headers(&[
        ("X-Slack-Request-Timestamp", (NOW - 301).to_string()),
        ("X-Slack-Signature", sig(SECRET, NOW - 301, BODY)),
    ]);
    assert_eq!(label(check(&s, &stale, BODY, &[SECRET])), "stale_timestamp");
    let v1 = headers(&[
        ("X-Slack-Request-Timestamp", NOW.to_string()),
        (
            "X-Slack-Signature",
            sig(SECRET, NOW, BODY).replace("v0=", "v1="),
        ),
    ]);
    assert_eq!(label(check(&s, &v1, BODY, &[SECRET])), "malformed");
}

#[test]
fn slack_challenge() {
    let body = br#"{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P","type":"url_verification"}"#;
    assert_eq!(
        slack_url_verification(body).as_deref(),
        Some("3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P")
    );
    assert_eq!(
        slack_url_verification(br#"{"type":"event_callback","challenge":"x"}"#),
        None
    );
    assert_eq!(slack_url_verification(b"not json"), None);
}

// ---- Shopify ----------------------------------------------------------------------------

#[test]
fn shopify() {
    let s = Scheme::Shopify;
    let sig = |secret: &str, body: &[u8]| STANDARD.encode(mac256(secret.as_bytes(), body));
    let h = headers(&[
        ("X-Shopify-Hmac-Sha256", sig(SECRET, BODY)),
        (
            "X-Shopify-Webhook-Id",
            "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043".into(),
        ),
    ]);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!(
        ok.delivery_id.as_deref(),
        Some("b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")
    );
    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let hex_sig = headers(&[(
        "X-Shopify-Hmac-Sha256",
        hex::encode(mac256(SECRET.as_bytes(), BODY)),
    )]);
    assert_ne!(label(check(&s, &hex_sig, BODY, &[SECRET])), "ok");
    let junk = headers(&[("X-Shopify-Hmac-Sha256", "%%%".into())]);
    assert_eq!(label(check(&s, &junk, BODY, &[SECRET])), "malformed");
}

// ---- generic HMAC -----------------------------------------------------------------------

#[test]
fn generic_hmac_sha512_base64_with_template() {
    let g = GenericHmac::new(
        "X-Acme-Signature",
        HmacAlgorithm::Sha512,
        SignatureEncoding::Base64,
        "sha512=",
        "{timestamp}:{delivery_id}:{header:X-Acme-Tenant}:{body}",
        Some("X-Acme-Time"),
        Some("X-Acme-Delivery"),
    )
    .unwrap();
    let s = Scheme::GenericHmac(g);
    assert!(s.signs_timestamp());
    let sign = |secret: &str, ts: i64, body: &[u8]| {
        let mut m = <Hmac<Sha512> as KeyInit>::new_from_slice(secret.as_bytes()).unwrap();
        m.update(format!("{ts}:dlv-1:acme:").as_bytes());
        m.update(body);
        format!("sha512={}", STANDARD.encode(m.finalize().into_bytes()))
    };
    let make = |sig: String, ts: i64| {
        headers(&[
            ("X-Acme-Signature", sig),
            ("X-Acme-Time", ts.to_string()),
            ("X-Acme-Delivery", "dlv-1".into()),
            ("X-Acme-Tenant", "acme".into()),
        ])
    };
    let h = make(sign(SECRET, NOW, BODY), NOW);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!(
        (ok.delivery_id.as_deref(), ok.timestamp),
        (Some("dlv-1"), Some(NOW))
    );
    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let stale = make(sign(SECRET, NOW - 1000, BODY), NOW - 1000);
    assert_eq!(label(check(&s, &stale, BODY, &[SECRET])), "stale_timestamp");
    let mut other_tenant = h.clone();
    other_tenant.insert("x-acme-tenant".into(), "evil".into());
    assert_eq!(
        label(check(&s, &other_tenant, BODY, &[SECRET])),
        "bad_signature"
    );
    let mut no_tenant = h.clone();
    no_tenant.remove("x-acme-tenant");
    assert_eq!(
        label(check(&s, &no_tenant, BODY, &[SECRET])),
        "missing_header"
    );
    let mut no_prefix = h.clone();
    no_prefix.insert(
        "x-acme-signature".into(),
        h["x-acme-signature"].trim_start_matches("sha512=").into(),
    );
    assert_eq!(label(check(&s, &no_prefix, BODY, &[SECRET])), "malformed");
}

#[test]
fn generic_hmac_defaults_to_hex_sha256_over_the_body() {
    let g = GenericHmac::new(
        "X-Sig",
        HmacAlgorithm::Sha256,
        SignatureEncoding::Hex,
        "",
        "",
        None,
        None,
    )
    .unwrap();
    let s = Scheme::GenericHmac(g);
    assert!(!s.signs_timestamp());
    let upper = hex::encode_upper(mac256(SECRET.as_bytes(), BODY));
    let h = headers(&[("X-Sig", upper)]);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!((ok.delivery_id, ok.timestamp), (None, None));
    assert_eq!(label(check(&s, &h, TAMPERED, &[SECRET])), "bad_signature");
}

#[test]
fn generic_hmac_settings_are_checked() {
    let new = |header: &str, template: &str, ts: Option<&str>| {
        GenericHmac::new(
            header,
            HmacAlgorithm::Sha256,
            SignatureEncoding::Hex,
            "",
            template,
            ts,
            None,
        )
    };
    assert_eq!(
        new("X Bad", "", None).unwrap_err().field,
        "signature_header"
    );
    assert_eq!(
        new("X-Sig", "{timestamp}.{body}", None).unwrap_err().field,
        "signed_content"
    );
    assert!(new("X-Sig", "{nope}{body}", None)
        .unwrap_err()
        .message
        .contains("{nope}"));
    assert!(new("X-Sig", "{timestamp}", Some("X-Ts"))
        .unwrap_err()
        .message
        .contains("{body}"));
    assert!(new("X-Sig", "{body", None).is_err());
    assert!(new("X-Sig", "body}", None).is_err());
    assert!(new("X-Sig", "{header:X Bad}{body}", None).is_err());
    assert!(new("X-Sig", "{body}", Some("X-Ts"))
        .unwrap_err()
        .message
        .contains("{timestamp}"));
    new("X-Sig", "v1:{timestamp}:{body}", Some("X-Ts")).unwrap();
}

// ---- bearer and basic -------------------------------------------------------------------

#[test]
fn bearer() {
    let s = Scheme::Bearer;
    let h = headers(&[("Authorization", format!("Bearer {SECRET}"))]);
    let ok = check(&s, &h, BODY, &[SECRET]).unwrap();
    assert_eq!((ok.delivery_id, ok.timestamp), (None, None));
    assert_eq!(
        label(check(&s, &h, TAMPERED, &[SECRET])),
        "ok",
        "bearer does not sign the body"
    );
    assert_eq!(label(check(&s, &h, BODY, &[OTHER])), "bad_signature");
    assert_eq!(
        check(&s, &h, BODY, &[OTHER, SECRET]).unwrap().secret_index,
        1
    );
    let lower = headers(&[("Authorization", format!("bearer {SECRET}"))]);
    assert_eq!(label(check(&s, &lower, BODY, &[SECRET])), "ok");
    let prefix = headers(&[("Authorization", format!("Bearer {}", &SECRET[..10]))]);
    assert_eq!(label(check(&s, &prefix, BODY, &[SECRET])), "bad_signature");
    let basic = headers(&[("Authorization", format!("Basic {SECRET}"))]);
    assert_eq!(label(check(&s, &basic, BODY, &[SECRET])), "malformed");
    assert_eq!(
        label(check(&s, &HashMap::new(), BODY, &[SECRET])),
        "missing_header"
    );
}

#[test]
fn basic() {
    let s = Scheme::Basic {
        username: "hook".into(),
    };
    let auth = |user: &str, pass: &str| {
        headers(&[(
            "Authorization",
            format!("Basic {}", STANDARD.encode(format!("{user}:{pass}"))),
        )])
    };
    assert_eq!(
        label(check(&s, &auth("hook", SECRET), BODY, &[SECRET])),
        "ok"
    );
    assert_eq!(
        check(&s, &auth("hook", SECRET), BODY, &[OTHER, SECRET])
            .unwrap()
            .secret_index,
        1
    );
    assert_eq!(
        label(check(&s, &auth("hook", OTHER), BODY, &[SECRET])),
        "bad_signature"
    );
    assert_eq!(
        label(check(&s, &auth("hooker", SECRET), BODY, &[SECRET])),
        "bad_signature"
    );
    // A password may contain `:`; only the first one separates the user name.
    assert_eq!(
        label(check(
            &s,
            &auth("hook", "with:colon:secret"),
            BODY,
            &["with:colon:secret"]
        )),
        "ok"
    );
    let junk = headers(&[("Authorization", "Basic %%%".into())]);
    assert_eq!(label(check(&s, &junk, BODY, &[SECRET])), "malformed");
    let no_colon = headers(&[(
        "Authorization",
        format!("Basic {}", STANDARD.encode("hook")),
    )]);
    assert_eq!(label(check(&s, &no_colon, BODY, &[SECRET])), "malformed");
}

#[test]
fn failures_say_nothing_secret() {
    let h = zen_headers(SECRET, NOW, "n-1", BODY);
    for f in [
        check(&Scheme::ZenHmac, &h, TAMPERED, &[SECRET]).unwrap_err(),
        check(&Scheme::ZenHmac, &h, BODY, &[OTHER]).unwrap_err(),
    ] {
        let text = f.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains(&h["x-signature"]),
            "{text}"
        );
    }
}
