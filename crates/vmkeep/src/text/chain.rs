//! An error and its sources on one line ("cannot save: no space left"),
//! for messages that must be a single text (a journal record, an API
//! answer, a report to the CLI).

/// An error and its sources, as one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
