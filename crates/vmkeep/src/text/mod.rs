//! Text helpers that know nothing of instances: Go's template language as
//! Lima's templates and `list --format` use it ([`gotmpl`]), "did you
//! mean ...?" for misspelt words ([`suggest`]), and an error with its
//! sources on one line ([`chain`]).

pub mod chain;
pub mod gotmpl;
pub mod suggest;
