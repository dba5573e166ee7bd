//! An error and its sources on one line ("cannot save: no space left"),
//! for messages that must be a single text (a journal record, an API
//! answer, a report to the CLI). A source whose text the message already
//! says is not said again.

/// An error and its sources, as one line, each cause once.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_the_message_already_says_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot write /x: {0}")]
        struct Write(#[source] std::io::Error);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot create a")]
        struct Create(#[source] Write);
        let full = std::io::Error::from_raw_os_error(libc::ENOSPC);
        let error = Create(Write(full));
        let text = error_chain(&error);
        assert_eq!(text.matches("No space left").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot create a: cannot write /x: "),
            "{text}"
        );
    }
}
