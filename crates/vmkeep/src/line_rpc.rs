//! JSON-lines request/response connections with interleaved events (to be written).
