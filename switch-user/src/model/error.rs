//! Why a command was refused, as a type: callers (the API server, a
//! future HTTPS API) map the kind to a status without matching on text.
//! `anyhow` stays for plumbing; a refusal travels inside it and is found
//! with [`refusal_of`].

use serde::{Deserialize, Serialize};

/// What kind of "no" a refused command got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The request is malformed or impossible as given (a bad weight, an
    /// unknown pool, an invalid config).
    Invalid,
    /// It names a service that does not exist.
    NotFound,
    /// It conflicts with what is going on (a running strategy).
    Conflict,
    /// It cannot be done now (etcd unreachable, capacity exhausted).
    Unavailable,
    /// The caller's level does not allow it.
    Forbidden,
}

/// A command refused before anything changed; the message is the one line
/// the operator sees.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub kind: RefusalKind,
    pub message: String,
}

impl Refusal {
    pub fn new(kind: RefusalKind, message: impl Into<String>) -> Refusal {
        Refusal {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Unavailable, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Refusal {
        Refusal::new(RefusalKind::Forbidden, message)
    }
}

/// A map write that failed while carrying out an accepted command: the
/// data plane's fault, not a refusal of the request. Its text is the
/// underlying error's.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct WriteFailed(#[from] pub anyhow::Error);

/// The refusal somewhere in `e`'s chain, if `e` is one.
pub fn refusal_of(e: &anyhow::Error) -> Option<RefusalKind> {
    e.chain()
        .find_map(|c| c.downcast_ref::<Refusal>())
        .map(|r| r.kind)
}

/// Whether `e` is a failed map write.
pub fn is_write_failure(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<WriteFailed>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_found_under_context_and_keeps_its_text() {
        let e = anyhow::Error::new(Refusal::conflict("service \"web\" is busy")).context("flip");
        assert_eq!(refusal_of(&e), Some(RefusalKind::Conflict));
        assert_eq!(format!("{e:#}"), "flip: service \"web\" is busy");
        let w = anyhow::Error::new(WriteFailed(anyhow::anyhow!("map full")));
        assert!(is_write_failure(&w) && refusal_of(&w).is_none());
        assert_eq!(format!("{w:#}"), "map full");
    }
}
