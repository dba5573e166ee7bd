//! Text helpers that know nothing of instances: Go's template language as
//! Lima's templates and `list --format` use it ([`gotmpl`]), and "did you
//! mean ...?" for misspelt words ([`suggest`]).

pub mod gotmpl;
pub mod suggest;
