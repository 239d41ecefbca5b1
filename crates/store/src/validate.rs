//! Input checks shared by the repositories (the database's CHECK
//! constraints are the second line).

use crate::error::{Result, StoreError};

/// Lowercase DNS label: 1-63 of `a-z0-9-`, not starting or ending with `-`.
pub(crate) fn dns_label(field: &'static str, v: &str) -> Result<()> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::invalid(
            field,
            "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
        ))
    }
}

/// Free text of bounded length without control characters; `""` allowed
/// only when `allow_empty`.
pub(crate) fn text(field: &'static str, v: &str, max: usize, allow_empty: bool) -> Result<()> {
    if v.is_empty() && !allow_empty {
        return Err(StoreError::invalid(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(StoreError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if v.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

pub(crate) fn opt_text(field: &'static str, v: Option<&str>, max: usize) -> Result<()> {
    v.map_or(Ok(()), |v| text(field, v, max, false))
}

/// A display name: defaults to `fallback` when empty.
pub(crate) fn display_name(v: &str, fallback: &str) -> Result<String> {
    let v = v.trim();
    let v = if v.is_empty() { fallback } else { v };
    text("display_name", v, 200, false)?;
    Ok(v.to_owned())
}

/// A plausible email address (the identity provider owns real validation).
pub(crate) fn email(v: &str) -> Result<()> {
    text("email", v, 320, false)?;
    match v.split_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() && !v.contains(' ') => {
            Ok(())
        }
        _ => Err(StoreError::invalid("email", "must look like name@domain")),
    }
}

pub(crate) fn non_negative(field: &'static str, v: i64) -> Result<()> {
    if v < 0 {
        Err(StoreError::invalid(field, "must not be negative"))
    } else {
        Ok(())
    }
}

/// Secrets handed to the store (bootstrap and invite tokens) must carry
/// enough entropy to be worth hashing without a salt.
pub(crate) fn token(v: &str) -> Result<()> {
    if v.len() < 16 {
        Err(StoreError::invalid(
            "token",
            "must be at least 16 characters",
        ))
    } else {
        Ok(())
    }
}
