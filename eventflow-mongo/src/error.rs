//! Reading the driver's errors: server error codes, transaction labels, and eventflow
//! errors that say what to do.

use eventflow::Error;
use mongodb::error::{
    ErrorKind, WriteFailure, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};

/// A unique index refused an insert.
pub(crate) const DUPLICATE_KEY: i32 = 11000;

/// The server error code of `error`, from a command or the first write error.
pub(crate) fn code(error: &mongodb::error::Error) -> Option<i32> {
    match &*error.kind {
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteError(write)) => Some(write.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(concern)) => Some(concern.code),
        ErrorKind::InsertMany(insert) => insert
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|e| e.code)
            .or_else(|| insert.write_concern_error.as_ref().map(|e| e.code)),
        _ => None,
    }
}

/// Whether a unique index refused the write.
pub(crate) fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    code(error) == Some(DUPLICATE_KEY)
}

/// The index, in an `insert_many`, of the document a unique index refused.
pub(crate) fn duplicate_index(error: &mongodb::error::Error) -> Option<usize> {
    match &*error.kind {
        ErrorKind::InsertMany(insert) => insert
            .write_errors
            .as_ref()?
            .iter()
            .find(|e| e.code == DUPLICATE_KEY)
            .map(|e| e.index),
        _ => None,
    }
}

/// The transaction spec's "retry the whole transaction" label.
pub(crate) fn is_transient(error: &mongodb::error::Error) -> bool {
    error.contains_label(TRANSIENT_TRANSACTION_ERROR)
}

/// The transaction spec's "retry the commit" label.
pub(crate) fn is_unknown_commit_result(error: &mongodb::error::Error) -> bool {
    error.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
}

/// An eventflow error for a failed MongoDB operation: what was being done, the driver's
/// message, and what to check.
pub(crate) fn backend(what: &str, error: mongodb::error::Error) -> Error {
    let hint = match &*error.kind {
        ErrorKind::ServerSelection { .. } => {
            "; check that the MongoDB server is running and reachable at the configured URI \
             (MONGODB_URI)"
        }
        ErrorKind::Authentication { .. } => "; check the credentials in the URI",
        ErrorKind::SessionsNotSupported | ErrorKind::IncompatibleServer { .. } => {
            "; eventflow-mongo needs a replica set or sharded cluster (MongoDB 4.2 or later): \
             transactions and change streams do not exist on a standalone server. Start the \
             server with `--replSet rs0` and run `rs.initiate()` once"
        }
        _ => match code(&error) {
            // IllegalOperation: "Transaction numbers are only allowed on a replica set member or mongos".
            Some(20) => {
                "; eventflow-mongo needs a replica set or sharded cluster: transactions and \
                 change streams do not exist on a standalone server. Start the server with \
                 `--replSet rs0` and run `rs.initiate()` once"
            }
            Some(13) => "; the user needs readWrite on the database (and changeStream for the relay)",
            _ => "",
        },
    };
    Error::backend(format!("MongoDB failed while {what}: {}{hint}", describe(&error)))
}

/// The driver's error without the raw server response its `Display` appends.
pub(crate) fn describe(error: &mongodb::error::Error) -> String {
    error.kind.to_string()
}

/// An eventflow error for a document eventflow cannot read.
pub(crate) fn unreadable(what: &str, reason: String) -> Error {
    Error::backend(format!(
        "{what} cannot be read: {reason}; the document was changed by something other than \
         eventflow, repair or remove it"
    ))
}
