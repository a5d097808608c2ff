//! Raising SQL errors with the right SQLSTATE.

use dunetrace_core::validate::{ErrorKind, ValidationError};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Raises an ERROR with `code`; never returns.
pub fn raise(code: PgSqlErrorCode, message: impl Into<String>) -> ! {
    let message: String = message.into();
    ereport!(ERROR, code, message);
}

/// 22023 invalid_parameter_value.
pub fn invalid(message: impl Into<String>) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

/// A rejected batch: 22P02 for wrong types and non-JSON, 22023 for values that break a rule.
pub fn rejected(e: &ValidationError) -> ! {
    let code = match e.kind {
        ErrorKind::InvalidType => PgSqlErrorCode::ERRCODE_INVALID_TEXT_REPRESENTATION,
        ErrorKind::InvalidValue => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
    };
    raise(
        code,
        format!("dunetrace.ingest: batch rejected, nothing stored: {e}"),
    )
}

/// 28000 invalid_authorization_specification.
pub fn bad_key(message: impl Into<String>) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        message,
    )
}

/// The value of an argument SQL may pass as NULL (the function is not STRICT because other
/// arguments are optional); NULL raises 22004 null_value_not_allowed, naming the argument.
pub fn required<T>(function: &str, argument: &str, value: Option<T>) -> T {
    value.unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{function}: {argument} must not be null"),
        )
    })
}
