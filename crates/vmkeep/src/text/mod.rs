//! Text helpers that know nothing of instances: Go's template language as
//! Lima's templates and `list --format` use it ([`gotmpl`]), "did you
//! mean ...?" for misspelt words ([`suggest`]), an error with its
//! sources on one line ([`chain`]), and keys of a YAML document set in
//! its text, comments kept ([`yaml_edit`]).

pub mod chain;
pub mod gotmpl;
pub mod suggest;
pub mod versioned_json;
pub mod yaml_edit;
