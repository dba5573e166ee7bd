//! Host side of the guest-agent channel (to be written).
