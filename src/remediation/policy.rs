//! Approval policy evaluation: who may approve, when, and whether the approvals are enough.

use chrono::{DateTime, Datelike, Timelike, Utc};
use uuid::Uuid;
use zen_store::{ApprovalPolicy, ApprovalWindow, Remediation, Role};

use crate::authz::rank;

/// Why an approval is refused (each maps to one contract error reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// PERMISSION_DENIED ROLE_TOO_LOW.
    RoleTooLow { required: Role },
    /// PERMISSION_DENIED SELF_APPROVAL_FORBIDDEN.
    SelfApproval,
    /// FAILED_PRECONDITION OUTSIDE_APPROVAL_WINDOW.
    OutsideWindow,
    /// ALREADY_EXISTS ALREADY_APPROVED.
    AlreadyApproved,
}

/// Checks one approval by `approver` (holding `role`; `approver_key` is how `proposed_by` and
/// `revised_by` name the same actor) of `remediation` at `now`.
pub fn check_approval(
    policy: &ApprovalPolicy,
    remediation: &Remediation,
    approver: Uuid,
    approver_key: &str,
    role: Role,
    now: DateTime<Utc>,
) -> Result<(), Refusal> {
    if rank(role) < rank(policy.min_approver_role) {
        return Err(Refusal::RoleTooLow {
            required: policy.min_approver_role,
        });
    }
    // The author of the current revision counts as a proposer: otherwise anyone allowed to
    // revise could rewrite the action and then approve their own version alone.
    let authored =
        remediation.proposed_by == approver_key || remediation.revised_by == approver_key;
    if !policy.allow_self_approval && authored {
        return Err(Refusal::SelfApproval);
    }
    if !in_window(&policy.approval_windows, now) {
        return Err(Refusal::OutsideWindow);
    }
    if remediation
        .approvals
        .iter()
        .any(|a| a.approver_id == approver && a.revision == remediation.revision)
    {
        return Err(Refusal::AlreadyApproved);
    }
    Ok(())
}

/// Whether `now` falls in one of the windows; no windows means any time.
pub fn in_window(windows: &[ApprovalWindow], now: DateTime<Utc>) -> bool {
    windows.is_empty()
        || windows.iter().any(|w| {
            let Ok(zone) = w.time_zone.parse::<chrono_tz::Tz>() else {
                // Validated on update; an unparsable zone admits nothing rather than anything.
                return false;
            };
            let local = now.with_timezone(&zone);
            let day = local.weekday().number_from_monday() as u8;
            let hour = local.hour() as u8;
            w.days.contains(&day) && hour >= w.start_hour && hour < w.end_hour
        })
}

/// A window as the policy update validates it; `Err` names the bad field and why.
pub fn validate_window(w: &ApprovalWindow) -> Result<(), (&'static str, String)> {
    if w.days.is_empty() || w.days.iter().any(|d| !(1..=7).contains(d)) {
        return Err(("days", "must name at least one day of the week".into()));
    }
    if w.start_hour > 23 {
        return Err(("start_hour", "must be 0 to 23".into()));
    }
    if w.end_hour > 24 || w.end_hour <= w.start_hour {
        return Err((
            "end_hour",
            "must be 1 to 24 and greater than start_hour".into(),
        ));
    }
    if w.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err((
            "time_zone",
            format!("{:?} is not an IANA time zone", w.time_zone),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn window(days: &[u8], start: u8, end: u8, zone: &str) -> ApprovalWindow {
        ApprovalWindow {
            days: days.to_vec(),
            start_hour: start,
            end_hour: end,
            time_zone: zone.into(),
        }
    }

    #[test]
    fn windows_are_read_in_their_time_zone() {
        // Monday 2026-03-02 08:30 UTC is 09:30 in Paris (UTC+1 in winter).
        let at = Utc.with_ymd_and_hms(2026, 3, 2, 8, 30, 0).unwrap();
        assert!(in_window(&[], at));
        assert!(in_window(&[window(&[1], 9, 17, "Europe/Paris")], at));
        assert!(!in_window(&[window(&[1], 9, 17, "UTC")], at));
        assert!(!in_window(&[window(&[2], 9, 17, "Europe/Paris")], at));
        assert!(in_window(
            &[
                window(&[2], 9, 17, "UTC"),
                window(&[1], 0, 24, "America/New_York")
            ],
            at
        ));
    }

    fn remediation(proposer: Uuid) -> Remediation {
        let at = Utc::now();
        Remediation {
            id: Uuid::now_v7(),
            tenant_id: Uuid::now_v7(),
            cluster_id: Uuid::now_v7(),
            event_id: None,
            title: "t".into(),
            description: String::new(),
            action: serde_json::json!({}),
            rollback_action: None,
            probes: serde_json::json!([]),
            risk: zen_store::RiskLevel::High,
            status: zen_store::RemediationStatus::Proposed,
            status_reason: String::new(),
            version: 1,
            revision: 2,
            required_approvals: 2,
            break_glass: false,
            break_glass_justification: String::new(),
            proposed_by: proposer.to_string(),
            revised_by: String::new(),
            created_at: at,
            updated_at: at,
            expires_at: None,
            dispatched_at: None,
            completed_at: None,
            last_error: String::new(),
            execution_id: None,
            attempts: 0,
            executed: false,
            approvals: Vec::new(),
        }
    }

    #[test]
    fn approvals_follow_the_policy() {
        let (proposer, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut policy = ApprovalPolicy::defaults(Uuid::now_v7());
        let mut r = remediation(proposer);
        let now = Utc::now();
        let check = |p: &ApprovalPolicy, r: &Remediation, who: Uuid, role| {
            check_approval(p, r, who, &who.to_string(), role, now)
        };
        assert_eq!(check(&policy, &r, other, Role::Approver), Ok(()));
        assert_eq!(
            check(&policy, &r, proposer, Role::Owner),
            Err(Refusal::SelfApproval)
        );
        policy.allow_self_approval = true;
        assert_eq!(check(&policy, &r, proposer, Role::Owner), Ok(()));
        policy.min_approver_role = Role::Admin;
        assert_eq!(
            check(&policy, &r, other, Role::Approver),
            Err(Refusal::RoleTooLow {
                required: Role::Admin
            })
        );
        // An approval of this revision counts once; one of an earlier revision is void.
        let approval = |revision| zen_store::remediation::Approval {
            approver_id: other,
            approver_role: Role::Admin,
            comment: String::new(),
            remediation_version: 1,
            revision,
            created_at: now,
        };
        // Whoever authored the current revision is a proposer too.
        policy.min_approver_role = Role::Approver;
        policy.allow_self_approval = false;
        r.revised_by = other.to_string();
        assert_eq!(
            check(&policy, &r, other, Role::Admin),
            Err(Refusal::SelfApproval)
        );
        let third = Uuid::now_v7();
        assert_eq!(check(&policy, &r, third, Role::Approver), Ok(()));
        r.revised_by.clear();
        policy.min_approver_role = Role::Admin;
        r.approvals = vec![approval(1)];
        assert_eq!(check(&policy, &r, other, Role::Admin), Ok(()));
        r.approvals = vec![approval(2)];
        assert_eq!(
            check(&policy, &r, other, Role::Admin),
            Err(Refusal::AlreadyApproved)
        );
    }

    #[test]
    fn bad_windows_are_refused_with_the_field() {
        assert_eq!(
            validate_window(&window(&[], 9, 17, "UTC")).unwrap_err().0,
            "days"
        );
        assert_eq!(
            validate_window(&window(&[1], 9, 9, "UTC")).unwrap_err().0,
            "end_hour"
        );
        assert_eq!(
            validate_window(&window(&[1], 9, 17, "Mars/Olympus"))
                .unwrap_err()
                .0,
            "time_zone"
        );
        assert!(validate_window(&window(&[1, 7], 0, 24, "Asia/Tokyo")).is_ok());
    }
}
