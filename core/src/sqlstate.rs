//! What a PostgreSQL error means to a caller of `dunetrace.ingest()`: one table shared by the
//! Rust client (what it retries, what it drops) and the HTTP gateway (which status it answers).
//!
//! The extension raises, for a call to `ingest()`:
//!
//! | SQLSTATE | raised when | class |
//! |---|---|---|
//! | 28000 | missing, malformed, unknown or revoked API key | [`ErrorClass::Auth`] |
//! | 42501 | an event's agent is not the key's agent, or its run belongs to another agent | [`ErrorClass::Forbidden`] |
//! | 22023, 22P02 | an event breaks a rule or has the wrong type; the batch is refused whole | [`ErrorClass::Invalid`] |
//! | 54000 | a run would exceed `dunetrace.max_events_per_run` | [`ErrorClass::TooLarge`] |
//! | 38000 | an external service (Langfuse) failed | [`ErrorClass::External`] |
//! | XX000, XX001 | an internal failure of the extension | [`ErrorClass::Internal`] |
//!
//! and PostgreSQL itself adds the transient conditions (connection loss, shutdown, overload,
//! deadlocks). [`classify`] is the whole table; anything it does not name is
//! [`ErrorClass::Internal`].

/// What an error means for the request that caused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The API key is missing, malformed, unknown or revoked (28000; 28P01). Every batch sent
    /// with this key will be refused the same way.
    Auth,
    /// The key may not write this data: an event's agent is not the key's, or its run belongs
    /// to another agent (42501).
    Forbidden,
    /// The batch breaks a rule (class 22: 22023, 22P02, …). It is refused whole; sending it
    /// again cannot help.
    Invalid,
    /// The request exceeds a limit (class 54: 54000, a run past
    /// `dunetrace.max_events_per_run`).
    TooLarge,
    /// The database cannot serve the call now, but the same call may succeed later: the
    /// connection was lost (class 08), the server is shutting down, restarting or not yet
    /// accepting connections (class 57: 57P01, 57P02, 57P03; also 57014, a cancelled
    /// statement), it is out of resources (class 53), a transaction lost a serialization
    /// conflict or deadlock (class 40), a lock was not available (55P03), the session landed
    /// on a read-only standby during a failover (25006), or the extension is not installed
    /// (yet) or is being replaced (3F000 no schema `dunetrace`, 42883 no function `ingest`).
    Transient,
    /// A service outside the database that the call relies on failed (class 38: 38000, e.g.
    /// Langfuse). Not a database problem, and not the request's fault.
    External,
    /// A failure inside the database or the extension (XX000, XX001, …), or any SQLSTATE this
    /// table does not name. Not retried: a batch that triggers a bug would block the queue.
    Internal,
}

/// The table: exact SQLSTATEs first, then whole classes (the first two characters). The first
/// match wins; anything unmatched is [`ErrorClass::Internal`].
const TABLE: &[(&str, ErrorClass)] = &[
    // Exact codes.
    ("28000", ErrorClass::Auth),
    ("28P01", ErrorClass::Auth),
    ("42501", ErrorClass::Forbidden),
    ("54000", ErrorClass::TooLarge),
    ("40001", ErrorClass::Transient),
    ("40P01", ErrorClass::Transient),
    ("55P03", ErrorClass::Transient),
    ("57P01", ErrorClass::Transient),
    ("57P02", ErrorClass::Transient),
    ("57P03", ErrorClass::Transient),
    ("57014", ErrorClass::Transient),
    ("25006", ErrorClass::Transient),
    ("3F000", ErrorClass::Transient),
    ("42883", ErrorClass::Transient),
    ("38000", ErrorClass::External),
    ("XX000", ErrorClass::Internal),
    ("XX001", ErrorClass::Internal),
    ("XX002", ErrorClass::Internal),
    // Whole classes.
    ("28", ErrorClass::Auth),
    ("22", ErrorClass::Invalid),
    ("54", ErrorClass::TooLarge),
    ("08", ErrorClass::Transient),
    ("40", ErrorClass::Transient),
    ("53", ErrorClass::Transient),
    ("57", ErrorClass::Transient),
    ("38", ErrorClass::External),
    ("XX", ErrorClass::Internal),
];

/// Classifies a SQLSTATE (five characters, digits and upper-case letters). Anything that is not
/// a SQLSTATE, or that the table does not name, is [`ErrorClass::Internal`].
///
/// ```
/// use dunetrace_core::sqlstate::{classify, ErrorClass};
/// assert_eq!(classify("28000"), ErrorClass::Auth);
/// assert_eq!(classify("22P02"), ErrorClass::Invalid);
/// assert_eq!(classify("08006"), ErrorClass::Transient);
/// assert_eq!(classify("42P01"), ErrorClass::Internal);
/// ```
pub fn classify(sqlstate: &str) -> ErrorClass {
    let well_formed = sqlstate.len() == 5
        && sqlstate
            .bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase());
    if !well_formed {
        return ErrorClass::Internal;
    }
    TABLE
        .iter()
        .find(|(pattern, _)| {
            if pattern.len() == 5 {
                sqlstate == *pattern
            } else {
                sqlstate.starts_with(pattern)
            }
        })
        .map_or(ErrorClass::Internal, |(_, class)| *class)
}

/// The prefix of every message the extension raises (`dunetrace.ingest: …`).
pub const EXTENSION_MESSAGE_PREFIX: &str = "dunetrace.";

/// [`classify`], refined with the error's message: a 42501 that the extension did not raise
/// (its messages start with `dunetrace.`) is PostgreSQL refusing the connecting role — it lacks
/// `EXECUTE` on `ingest()` or `USAGE` on the schema —, a deployment problem rather than the
/// request's, so it is [`ErrorClass::Internal`].
///
/// ```
/// use dunetrace_core::sqlstate::{classify_error, ErrorClass};
/// let mismatch = "dunetrace.ingest: batch rejected, nothing stored: event 0: agent_id …";
/// assert_eq!(classify_error("42501", mismatch), ErrorClass::Forbidden);
/// let role = "permission denied for function ingest";
/// assert_eq!(classify_error("42501", role), ErrorClass::Internal);
/// ```
pub fn classify_error(sqlstate: &str, message: &str) -> ErrorClass {
    match classify(sqlstate) {
        ErrorClass::Forbidden if !message.starts_with(EXTENSION_MESSAGE_PREFIX) => {
            ErrorClass::Internal
        }
        class => class,
    }
}

impl ErrorClass {
    /// Every class, in the order of the table's documentation.
    pub const ALL: [ErrorClass; 7] = [
        ErrorClass::Auth,
        ErrorClass::Forbidden,
        ErrorClass::Invalid,
        ErrorClass::TooLarge,
        ErrorClass::Transient,
        ErrorClass::External,
        ErrorClass::Internal,
    ];

    /// Whether the same call may succeed later: only [`Transient`](ErrorClass::Transient).
    /// Everything else fails again the same way (or needs a person to fix something).
    pub fn retryable(self) -> bool {
        matches!(self, ErrorClass::Transient)
    }

    /// Whether the request itself is at fault (its key, its agent, its content or its size),
    /// as opposed to the database or something outside it.
    pub fn refuses_request(self) -> bool {
        matches!(
            self,
            ErrorClass::Auth | ErrorClass::Forbidden | ErrorClass::Invalid | ErrorClass::TooLarge
        )
    }

    /// The HTTP status a gateway answers with. A 503 should carry `Retry-After`
    /// ([`retryable`](Self::retryable) is true exactly for it).
    pub fn http_status(self) -> u16 {
        match self {
            ErrorClass::Auth => 401,
            ErrorClass::Forbidden => 403,
            ErrorClass::Invalid => 422,
            ErrorClass::TooLarge => 413,
            ErrorClass::Transient => 503,
            ErrorClass::External => 502,
            ErrorClass::Internal => 500,
        }
    }

    /// A short lower-case name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Auth => "auth",
            ErrorClass::Forbidden => "forbidden",
            ErrorClass::Invalid => "invalid",
            ErrorClass::TooLarge => "too_large",
            ErrorClass::Transient => "transient",
            ErrorClass::External => "external",
            ErrorClass::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_extension_raises() {
        assert_eq!(classify("28000"), ErrorClass::Auth);
        assert_eq!(classify("42501"), ErrorClass::Forbidden);
        assert_eq!(classify("22023"), ErrorClass::Invalid);
        assert_eq!(classify("22P02"), ErrorClass::Invalid);
        assert_eq!(classify("54000"), ErrorClass::TooLarge);
        assert_eq!(classify("XX000"), ErrorClass::Internal);
        assert_eq!(classify("XX001"), ErrorClass::Internal);
        assert_eq!(classify("38000"), ErrorClass::External);
    }

    #[test]
    fn exact_codes_and_classes() {
        assert_eq!(classify("28P01"), ErrorClass::Auth);
        for c in ["22000", "22001", "22003", "22007", "22012", "2200N"] {
            assert_eq!(classify(c), ErrorClass::Invalid, "{c}");
        }
        for c in ["54001", "54011", "54023"] {
            assert_eq!(classify(c), ErrorClass::TooLarge, "{c}");
        }
        for c in [
            "08000", "08001", "08003", "08006", "08P01", "40000", "40001", "40P01", "53000",
            "53100", "53200", "53300", "53400", "57000", "57014", "57P01", "57P02", "57P03",
            "55P03", "25006", "3F000", "42883",
        ] {
            assert_eq!(classify(c), ErrorClass::Transient, "{c}");
        }
        for c in ["38001", "38002", "38003", "38004"] {
            assert_eq!(classify(c), ErrorClass::External, "{c}");
        }
        for c in [
            "XX002", "42P01", "42601", "23505", "0A000", "55000", "55006", "58030", "P0001",
            "25P02", "3D000", "00000", "01000", "02000",
        ] {
            assert_eq!(classify(c), ErrorClass::Internal, "{c}");
        }
    }

    #[test]
    fn malformed_codes_are_internal() {
        for c in [
            "", "2", "22", "2202", "220233", "22p02", "28 00", "280000", "é2202",
        ] {
            assert_eq!(classify(c), ErrorClass::Internal, "{c:?}");
        }
    }

    #[test]
    fn forbidden_only_from_the_extension() {
        assert_eq!(
            classify_error("42501", "dunetrace.ingest: batch rejected"),
            ErrorClass::Forbidden
        );
        assert_eq!(
            classify_error("42501", "permission denied for schema dunetrace"),
            ErrorClass::Internal
        );
        // Other classes do not depend on the message.
        assert_eq!(classify_error("28000", "anything"), ErrorClass::Auth);
        assert_eq!(classify_error("08006", ""), ErrorClass::Transient);
    }

    #[test]
    fn retry_and_status() {
        let want = [
            (ErrorClass::Auth, 401, false, true),
            (ErrorClass::Forbidden, 403, false, true),
            (ErrorClass::Invalid, 422, false, true),
            (ErrorClass::TooLarge, 413, false, true),
            (ErrorClass::Transient, 503, true, false),
            (ErrorClass::External, 502, false, false),
            (ErrorClass::Internal, 500, false, false),
        ];
        for (class, status, retry, refuses) in want {
            assert_eq!(class.http_status(), status, "{class}");
            assert_eq!(class.retryable(), retry, "{class}");
            assert_eq!(class.refuses_request(), refuses, "{class}");
        }
        assert_eq!(ErrorClass::ALL.len(), want.len());
        let names: std::collections::HashSet<_> =
            ErrorClass::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), ErrorClass::ALL.len());
    }

    #[test]
    fn table_is_well_formed() {
        // Exact codes come before the classes, so a class never shadows an exact code, and no
        // pattern appears twice.
        let first_class = TABLE.iter().position(|(p, _)| p.len() == 2).unwrap();
        assert!(TABLE[first_class..].iter().all(|(p, _)| p.len() == 2));
        assert!(TABLE[..first_class].iter().all(|(p, _)| p.len() == 5));
        let mut seen = std::collections::HashSet::new();
        for (p, _) in TABLE {
            assert!(seen.insert(*p), "{p} twice");
        }
    }
}
