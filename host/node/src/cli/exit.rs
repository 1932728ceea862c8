//! What `wraft`'s exit code says, so that a script can tell "the cluster said no" from "try
//! again" from "it may have happened" without reading the message.

use std::process::ExitCode;

use wraft_api::ApiError;
use wraft_client::ClientError;

/// The exit codes, listed in `wraft --help` and docs/operations.md ("Exit codes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Any other failure: a local file, a certificate, a data directory, a check that found
    /// problems.
    Failure = 1,
    /// The command line is wrong (clap's own code for a usage error).
    Usage = 2,
    /// The cluster answered no: the FSM refused the command or failed it deterministically,
    /// the certificate's role does not allow it, or the request is malformed. Sending it again
    /// unchanged gets the same answer; nothing was changed.
    Refused = 3,
    /// A write was sent and no answer says whether it applied: read before sending it again.
    OutcomeUnknown = 4,
    /// No node answered, there is no leader, or the node is too busy or shutting down:
    /// nothing was done; try again later or elsewhere.
    Unavailable = 5,
}

/// The text for `wraft --help`.
pub const HELP: &str = "Exit codes: 0 done; 1 other failure (files, certificates, data \
directories); 2 usage error; 3 refused by the cluster (the FSM, a role or a malformed request; \
nothing changed); 4 outcome unknown (a write was sent, no answer: read before resending); \
5 unavailable (unreachable, no leader, busy: nothing done, try again).";

/// A usage error found after parsing (arguments clap cannot check on its own).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Exit {
    /// The code for `error`: the first error in its chain that says more than "failed".
    pub fn of(error: &anyhow::Error) -> Self {
        error
            .chain()
            .find_map(|cause| {
                if let Some(e) = cause.downcast_ref::<ClientError>() {
                    return Self::of_client(e);
                }
                if let Some(e) = cause.downcast_ref::<ApiError>() {
                    return Some(Self::of_api(e));
                }
                cause.downcast_ref::<UsageError>().map(|_| Self::Usage)
            })
            .unwrap_or(Self::Failure)
    }

    fn of_client(e: &ClientError) -> Option<Self> {
        match e {
            ClientError::Unreachable { .. } => Some(Self::Unavailable),
            ClientError::OutcomeUnknown(_) => Some(Self::OutcomeUnknown),
            ClientError::Api(api) => Some(Self::of_api(api)),
            ClientError::Setup(_)
            | ClientError::Local(_)
            | ClientError::Codec(_)
            | ClientError::Unexpected(_) => None,
        }
    }

    fn of_api(e: &ApiError) -> Self {
        match e {
            ApiError::Failed(_) | ApiError::NotAllowed { .. } | ApiError::BadRequest(_) => {
                Self::Refused
            }
            ApiError::OutcomeUnknown(_) => Self::OutcomeUnknown,
            ApiError::NoLeader
            | ApiError::QueueFull { .. }
            | ApiError::Unavailable(_)
            | ApiError::Busy(_) => Self::Unavailable,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wraft_core::ApplyError;

    #[test]
    fn each_kind_of_error_has_its_code_through_context() {
        let refused = anyhow::Error::from(ClientError::Api(ApiError::Failed(
            ApplyError::Rejected("stale".into()),
        )))
        .context("applying");
        assert_eq!(Exit::of(&refused), Exit::Refused);
        let unknown = anyhow::Error::from(ClientError::OutcomeUnknown("lost".into()));
        assert_eq!(Exit::of(&unknown), Exit::OutcomeUnknown);
        let no_leader = anyhow::Error::from(ClientError::Api(ApiError::NoLeader));
        assert_eq!(Exit::of(&no_leader), Exit::Unavailable);
        let usage = anyhow::Error::from(UsageError("give FSM and JSON".into()));
        assert_eq!(Exit::of(&usage), Exit::Usage);
        let local = anyhow::anyhow!("reading batch.json");
        assert_eq!(Exit::of(&local), Exit::Failure);
    }
}
