//! The remediation state machine: one table of `(from, event) -> to`. Every pair not in the
//! table is refused with FAILED_PRECONDITION (`INVALID_STATE`) and a reason naming the status
//! and the event; nothing else in the code decides a status.

use zen_store::RemediationStatus as S;

/// Something that happens to a remediation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// An approval that leaves the count below the required number.
    Approve,
    /// The approval that reaches the required number.
    ApproveFinal,
    /// An owner's break-glass approval.
    BreakGlass,
    Reject,
    Cancel,
    /// A revision that needs approvals again.
    Revise,
    /// A revision whose new risk needs no approval.
    ReviseApproved,
    /// The pending expiry passed.
    Expire,
    /// The dispatcher sent the command for the first time.
    Dispatch,
    /// The agent reports it is applying the action.
    Execute,
    /// The agent reports the action applied, probes running.
    Verify,
    /// The agent reports success (action applied, every probe passed).
    Succeed,
    /// Execution or verification failed and no automatic rollback follows.
    Fail,
    /// Verification failed and the policy rolls back automatically.
    AutoRollback,
    /// Someone asked for a rollback.
    RequestRollback,
    /// The rollback execution succeeded.
    RollbackSucceed,
    /// The rollback execution failed.
    RollbackFail,
    /// Dispatch attempts were exhausted.
    DeadLetter,
    /// A dead letter of an apply execution was replayed.
    Replay,
    /// A dead letter of a rollback execution was replayed.
    ReplayRollback,
}

impl Event {
    pub const ALL: &'static [Event] = &[
        Event::Approve,
        Event::ApproveFinal,
        Event::BreakGlass,
        Event::Reject,
        Event::Cancel,
        Event::Revise,
        Event::ReviseApproved,
        Event::Expire,
        Event::Dispatch,
        Event::Execute,
        Event::Verify,
        Event::Succeed,
        Event::Fail,
        Event::AutoRollback,
        Event::RequestRollback,
        Event::RollbackSucceed,
        Event::RollbackFail,
        Event::DeadLetter,
        Event::Replay,
        Event::ReplayRollback,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Approve => "approve",
            Event::ApproveFinal => "approve",
            Event::BreakGlass => "break_glass",
            Event::Reject => "reject",
            Event::Cancel => "cancel",
            Event::Revise | Event::ReviseApproved => "revise",
            Event::Expire => "expire",
            Event::Dispatch => "dispatch",
            Event::Execute => "execute",
            Event::Verify => "verify",
            Event::Succeed => "succeed",
            Event::Fail => "fail",
            Event::AutoRollback | Event::RequestRollback => "rollback",
            Event::RollbackSucceed => "rollback_succeed",
            Event::RollbackFail => "rollback_fail",
            Event::DeadLetter => "dead_letter",
            Event::Replay | Event::ReplayRollback => "replay",
        }
    }
}

/// The whole table. Order is documentation only.
pub const TRANSITIONS: &[(S, Event, S)] = &[
    // approval
    (S::Proposed, Event::Approve, S::PendingApproval),
    (S::PendingApproval, Event::Approve, S::PendingApproval),
    (S::Proposed, Event::ApproveFinal, S::Approved),
    (S::PendingApproval, Event::ApproveFinal, S::Approved),
    (S::Proposed, Event::BreakGlass, S::Approved),
    (S::PendingApproval, Event::BreakGlass, S::Approved),
    (S::Proposed, Event::Reject, S::Rejected),
    (S::PendingApproval, Event::Reject, S::Rejected),
    (S::Proposed, Event::Expire, S::Expired),
    (S::PendingApproval, Event::Expire, S::Expired),
    // before dispatch
    (S::Proposed, Event::Cancel, S::Cancelled),
    (S::PendingApproval, Event::Cancel, S::Cancelled),
    (S::Approved, Event::Cancel, S::Cancelled),
    (S::Proposed, Event::Revise, S::Proposed),
    (S::PendingApproval, Event::Revise, S::Proposed),
    (S::Approved, Event::Revise, S::Proposed),
    (S::Proposed, Event::ReviseApproved, S::Approved),
    (S::PendingApproval, Event::ReviseApproved, S::Approved),
    (S::Approved, Event::ReviseApproved, S::Approved),
    // execution; an agent may skip phases (a report lost with a broken stream), never go back
    (S::Approved, Event::Dispatch, S::Dispatched),
    (S::Dispatched, Event::Execute, S::Executing),
    (S::Dispatched, Event::Verify, S::Verifying),
    (S::Executing, Event::Verify, S::Verifying),
    (S::Dispatched, Event::Succeed, S::Succeeded),
    (S::Executing, Event::Succeed, S::Succeeded),
    (S::Verifying, Event::Succeed, S::Succeeded),
    (S::Dispatched, Event::Fail, S::Failed),
    (S::Executing, Event::Fail, S::Failed),
    (S::Verifying, Event::Fail, S::Failed),
    (S::Dispatched, Event::AutoRollback, S::RollingBack),
    (S::Executing, Event::AutoRollback, S::RollingBack),
    (S::Verifying, Event::AutoRollback, S::RollingBack),
    // rollback
    (S::Succeeded, Event::RequestRollback, S::RollingBack),
    (S::Failed, Event::RequestRollback, S::RollingBack),
    (S::RollingBack, Event::RollbackSucceed, S::RolledBack),
    (S::RollingBack, Event::RollbackFail, S::Failed),
    // dead letters (an execution never acknowledged, apply or rollback)
    (S::Approved, Event::DeadLetter, S::Failed),
    (S::Dispatched, Event::DeadLetter, S::Failed),
    (S::Executing, Event::DeadLetter, S::Failed),
    (S::Verifying, Event::DeadLetter, S::Failed),
    (S::RollingBack, Event::DeadLetter, S::Failed),
    (S::Failed, Event::Replay, S::Approved),
    (S::Failed, Event::ReplayRollback, S::RollingBack),
];

/// The status `event` leads to from `from`, or why not.
pub fn next(from: S, event: Event) -> Result<S, String> {
    TRANSITIONS
        .iter()
        .find(|(f, e, _)| *f == from && *e == event)
        .map(|(_, _, to)| *to)
        .ok_or_else(|| {
            format!(
                "a {} remediation cannot {}",
                from.as_str().replace('_', " "),
                event.name().replace('_', " ")
            )
        })
}

/// Statuses a remediation never leaves (FAILED can still be rolled back or replayed).
pub fn is_terminal(status: S) -> bool {
    matches!(
        status,
        S::Succeeded | S::Failed | S::RolledBack | S::Rejected | S::Cancelled | S::Expired
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The expected outcome of every status × every event, written out independently of the
    /// table (by the rules in the contract), so a change to either shows here.
    fn expected(from: S, event: Event) -> Option<S> {
        use Event as E;
        let awaiting = matches!(from, S::Proposed | S::PendingApproval);
        let before_dispatch = awaiting || from == S::Approved;
        let running = matches!(from, S::Dispatched | S::Executing | S::Verifying);
        match event {
            E::Approve if awaiting => Some(S::PendingApproval),
            E::ApproveFinal | E::BreakGlass if awaiting => Some(S::Approved),
            E::Reject if awaiting => Some(S::Rejected),
            E::Expire if awaiting => Some(S::Expired),
            E::Cancel if before_dispatch => Some(S::Cancelled),
            E::Revise if before_dispatch => Some(S::Proposed),
            E::ReviseApproved if before_dispatch => Some(S::Approved),
            E::Dispatch if from == S::Approved => Some(S::Dispatched),
            E::Execute if from == S::Dispatched => Some(S::Executing),
            E::Verify if matches!(from, S::Dispatched | S::Executing) => Some(S::Verifying),
            E::Succeed if running => Some(S::Succeeded),
            E::Fail if running => Some(S::Failed),
            E::AutoRollback if running => Some(S::RollingBack),
            E::RequestRollback if matches!(from, S::Succeeded | S::Failed) => Some(S::RollingBack),
            E::RollbackSucceed if from == S::RollingBack => Some(S::RolledBack),
            E::RollbackFail if from == S::RollingBack => Some(S::Failed),
            E::DeadLetter if from == S::Approved || running || from == S::RollingBack => {
                Some(S::Failed)
            }
            E::Replay if from == S::Failed => Some(S::Approved),
            E::ReplayRollback if from == S::Failed => Some(S::RollingBack),
            _ => None,
        }
    }

    #[test]
    fn every_status_and_event_pair_follows_the_contract() {
        let mut allowed = 0;
        for &from in S::ALL {
            for &event in Event::ALL {
                let got = next(from, event);
                match expected(from, event) {
                    Some(to) => {
                        assert_eq!(got, Ok(to), "{from:?} --{event:?}-->");
                        allowed += 1;
                    }
                    None => {
                        let reason = got.expect_err(&format!("{from:?} --{event:?}--> allowed"));
                        assert!(
                            reason.contains(&from.as_str().replace('_', " ")),
                            "{reason}"
                        );
                    }
                }
            }
        }
        assert_eq!(allowed, TRANSITIONS.len(), "the table has no duplicates");
    }

    #[test]
    fn terminal_statuses_only_leave_by_rollback_or_replay() {
        for &from in S::ALL.iter().filter(|s| is_terminal(**s)) {
            for &event in Event::ALL {
                if let Ok(to) = next(from, event) {
                    assert!(
                        matches!(
                            event,
                            Event::RequestRollback | Event::Replay | Event::ReplayRollback
                        ),
                        "{from:?} --{event:?}--> {to:?}"
                    );
                }
            }
        }
    }
}
